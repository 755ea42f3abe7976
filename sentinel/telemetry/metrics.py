"""Prometheus metrics for every interaction, named after the OpenTelemetry GenAI conventions where they exist.

`gen_ai_*` series follow the GenAI semantic conventions (labels `gen_ai_operation_name`,
`gen_ai_request_model`, `gen_ai_token_type`, `error_type`); the rest is `sentinel_*`. Model names
are folded into `other` beyond a configured list (or the first `max_models` seen) so label
cardinality stays bounded whatever callers send.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sentinel import __version__
from sentinel.interaction import Interaction, Outcome

# Bucket boundaries recommended by the GenAI semantic conventions.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Boundaries at the alert thresholds (sentinel/monitoring/thresholds.py) so quantiles are exact there.
ANSWER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

OTHER_MODEL = "other"
NO_MODEL = "none"


class ModelLabels:
    """Bounded model label values: the configured names, else the first `limit` seen; the rest is `other`."""

    def __init__(self, models: Sequence[str] = (), limit: int = 20) -> None:
        self._fixed = bool(models)
        self._allowed: set[str] = set(models)
        self._limit = limit
        self._lock = threading.Lock()

    def __call__(self, model: str | None) -> str:
        if not model:
            return NO_MODEL
        if model in self._allowed:
            return model
        if self._fixed:
            return OTHER_MODEL
        with self._lock:
            if len(self._allowed) < self._limit:
                self._allowed.add(model)
                return model
        return OTHER_MODEL


class ProxyMetrics:
    """All interaction metrics, registered in the given registry (tests pass a fresh one each)."""

    def __init__(self, registry: CollectorRegistry, models: ModelLabels | None = None) -> None:
        self.registry = registry
        self.models = models or ModelLabels()
        op, model = "gen_ai_operation_name", "gen_ai_request_model"
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from request arrival to the last response byte, as seen by Sentinel.",
            [op, model, "error_type"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        # The GenAI histogram has no stream label (and a large label set); alerting on non-streamed latency
        # needs one, so this small histogram adds it: operations x {true,false} x buckets.
        self.answer_duration = Histogram(
            "sentinel_request_duration_seconds",
            "Request arrival to last response byte for requests that ended ok, by operation and streaming.",
            [op, "stream"],
            buckets=ANSWER_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from request arrival to the first chunk carrying generated output (streams only).",
            [op, model],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request as reported by the model server, by token type (input/output).",
            [op, model, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "sentinel_tokens",
            "Tokens reported by the model server, by token type (input/output/reasoning).",
            [op, model, "gen_ai_token_type"],
            registry=registry,
        )
        self.usage_unknown = Counter(
            "sentinel_usage_unknown",
            "Generation requests whose token usage the model server did not report.",
            [op, model],
            registry=registry,
        )
        self.requests = Counter(
            "sentinel_requests",
            "Requests by operation, model, HTTP status class and outcome (ok/error/aborted/rejected).",
            [op, model, "status_class", "outcome", "error_type"],
            registry=registry,
        )
        self.errors = Counter(
            "sentinel_errors",
            "Interactions that did not end ok, by error type.",
            [op, "error_type"],
            registry=registry,
        )
        self.in_flight = Gauge("sentinel_requests_in_flight", "Requests being forwarded right now.", registry=registry)
        self.overhead = Histogram(
            "sentinel_proxy_overhead_seconds",
            "Latency Sentinel itself adds: before the upstream call plus after its response headers.",
            [op],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.bytes = Counter(
            "sentinel_http_body_bytes", "Body bytes forwarded, by direction.", ["direction"], registry=registry
        )
        self._request_bytes = self.bytes.labels("request")
        self._response_bytes = self.bytes.labels("response")
        self._children: dict[tuple[str, str, str, str, str, bool], _Children] = {}
        Info("sentinel_build", "Sentinel version.", registry=registry).info({"version": __version__})

    def observe(self, i: Interaction) -> None:
        op = i.operation.value
        model = self.models(i.model_requested)
        error_type = i.error_type or ""
        status_class = _STATUS_CLASS.get(i.status_code // 100, "none")
        key = (op, model, status_class, i.outcome.value, error_type, i.stream)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = _Children(self, key)
        children.requests.inc()
        children.duration.observe(i.duration_s)
        if children.answer_duration is not None:
            children.answer_duration.observe(i.duration_s)
        if children.errors is not None:
            children.errors.inc()
        if i.ttft_s is not None:
            children.ttft.observe(i.ttft_s)
        if i.overhead_s is not None:
            children.overhead.observe(i.overhead_s)
        usage = i.usage
        if usage.input_tokens is not None:
            children.input_usage.observe(usage.input_tokens)
            children.input_tokens.inc(usage.input_tokens)
        if usage.output_tokens is not None:
            children.output_usage.observe(usage.output_tokens)
            children.output_tokens.inc(usage.output_tokens)
        if usage.reasoning_tokens:
            children.reasoning_tokens.inc(usage.reasoning_tokens)
        if usage.source is None and i.outcome is Outcome.OK and op != "other":
            children.usage_unknown.inc()
        self._request_bytes.inc(i.request_bytes)
        self._response_bytes.inc(i.response_bytes)


_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class _Children:
    """The labelled series one label combination touches, looked up once and cached (labels() is not free)."""

    __slots__ = (
        "answer_duration",
        "duration",
        "errors",
        "input_tokens",
        "input_usage",
        "output_tokens",
        "output_usage",
        "overhead",
        "reasoning_tokens",
        "requests",
        "ttft",
        "usage_unknown",
    )

    def __init__(self, m: ProxyMetrics, key: tuple[str, str, str, str, str, bool]) -> None:
        op, model, status_class, outcome, error_type, stream = key
        ok = outcome == Outcome.OK.value
        self.answer_duration = m.answer_duration.labels(op, "true" if stream else "false") if ok else None
        self.requests = m.requests.labels(op, model, status_class, outcome, error_type)
        self.duration = m.request_duration.labels(op, model, error_type)
        self.errors = m.errors.labels(op, error_type) if not ok else None
        self.ttft = m.ttft.labels(op, model)
        self.overhead = m.overhead.labels(op)
        self.input_usage = m.token_usage.labels(op, model, "input")
        self.output_usage = m.token_usage.labels(op, model, "output")
        self.input_tokens = m.tokens.labels(op, model, "input")
        self.output_tokens = m.tokens.labels(op, model, "output")
        self.reasoning_tokens = m.tokens.labels(op, model, "reasoning")
        self.usage_unknown = m.usage_unknown.labels(op, model)


class ReadAtScrape(Collector):
    """Gauges whose values are read when Prometheus scrapes (queue depths, spool size, ...), and
    counters kept by the object that counts (`counter`).

    Each reader returns `(labels, value)` pairs; a reader that raises is skipped for that scrape.
    """

    def __init__(self) -> None:
        self._gauges: list[tuple[str, str, Sequence[str], Callable[[], Iterable[tuple[Sequence[str], float]]]]] = []
        self._counters: list[tuple[str, str, Sequence[str], Callable[[], Iterable[tuple[Sequence[str], float]]]]] = []

    def counter(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        read: Callable[[], Iterable[tuple[Sequence[str], float]]],
    ) -> None:
        """A counter (`name` without `_total`) whose values only grow, read at scrape time."""
        self._counters.append((name, documentation, labels, read))

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        read: Callable[[], Iterable[tuple[Sequence[str], float]]],
    ) -> None:
        self._gauges.append((name, documentation, labels, read))

    def collect(self) -> Iterable[Metric]:
        for name, documentation, labels, read in self._gauges:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            try:
                for label_values, value in read():
                    family.add_metric(list(label_values), value)
            except Exception:  # a broken reader must not break the whole scrape
                continue
            yield family
        for name, documentation, labels, read in self._counters:
            counter = CounterMetricFamily(name, documentation, labels=list(labels))
            try:
                for label_values, value in read():
                    counter.add_metric(list(label_values), value)
            except Exception:
                continue
            yield counter
