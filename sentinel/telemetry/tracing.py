"""OpenTelemetry traces: one SERVER span per request and one CLIENT span for its upstream call.

The request path only decides ids and sampling (honouring an incoming `traceparent`, otherwise
like `ParentBased(TraceIdRatioBased)`) and injects a `traceparent` upstream; the spans themselves
are built afterwards on the recorder task from the exchange's timestamps, with exactly those ids,
so tracing costs the request path next to nothing.

The SERVER span carries the HTTP view plus the operation and model; the CLIENT span is the GenAI
inference span with the full `gen_ai.*` attribute set. No prompt, response or raw end-user id
ever goes on a span.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry

from sentinel import __version__
from sentinel.interaction import Interaction, Operation, Outcome
from sentinel.telemetry.otlp import OtlpSpanQueue

if TYPE_CHECKING:
    from sentinel.config import TracingSettings

_getrandbits = random.getrandbits
_TRACE_ID_LIMIT = (1 << 64) - 1


@dataclass(slots=True)
class TraceContext:
    """Ids for one request's trace, fixed when the request arrives."""

    trace_id: int
    span_id: int
    """The SERVER span's id."""
    upstream_span_id: int
    """The CLIENT span's id; it is the parent the upstream sees in `traceparent`."""
    parent_span_id: int | None
    sampled: bool
    tracestate: bytes | None = None

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        return f"{self.span_id:016x}"

    def upstream_traceparent(self) -> bytes:
        flags = b"01" if self.sampled else b"00"
        return b"00-%032x-%016x-%s" % (self.trace_id, self.upstream_span_id, flags)


def _parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """W3C Trace Context `traceparent`: `version-traceid-parentid-flags`; None if not usable."""
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    if parts[0] == b"ff" or (parts[0] == b"00" and len(parts) != 4):
        return None
    try:
        int(parts[0], 16)
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(flags & 1)


class TraceStarter:
    """Decides a request's trace ids on the request path; root sampling matches `TraceIdRatioBased`."""

    __slots__ = ("_bound",)

    def __init__(self, sample_ratio: float = 1.0) -> None:
        self._bound = TraceIdRatioBased.get_bound_for_rate(sample_ratio)

    def start(self, traceparent: bytes | None, tracestate: bytes | None) -> TraceContext:
        parent = _parse_traceparent(traceparent) if traceparent else None
        if parent is not None:
            trace_id, parent_span_id, sampled = parent
            return TraceContext(trace_id, _getrandbits(64), _getrandbits(64), parent_span_id, sampled, tracestate)
        trace_id = _getrandbits(128)
        return TraceContext(
            trace_id, _getrandbits(64), _getrandbits(64), None, (trace_id & _TRACE_ID_LIMIT) < self._bound
        )


class SpanEmitter:
    """Builds the two spans of each finished, sampled interaction and hands them to a span processor.

    The spans are assembled as SDK `ReadableSpan`s from the recorded ids and timestamps rather than
    started and ended live through a `Tracer`: the request path has already decided every id (it had
    to, to send `traceparent` upstream), and building them here costs a fraction of a live span's
    bookkeeping. Export, batching and retries are the SDK's (`BatchSpanProcessor`, OTLP exporter).
    """

    def __init__(self, processor: SpanProcessor | OtlpSpanQueue, resource: Resource) -> None:
        self._processor = processor
        self._queue = processor if isinstance(processor, OtlpSpanQueue) else None
        self._resource = resource
        self._scope = InstrumentationScope("sentinel", __version__)

    @classmethod
    def from_settings(
        cls, settings: TracingSettings, registry: CollectorRegistry, processor: SpanProcessor | None = None
    ) -> SpanEmitter | None:
        """None when nothing would receive the spans (no exporter configured, no processor given)."""
        base = Resource.create({"service.name": settings.service_name, "service.version": __version__})
        resource = _Resource(base.attributes, base.schema_url)
        if processor is not None:
            return cls(processor, resource)
        if not settings.exporting:
            return None
        if settings.exporter == "console":
            return cls(BatchSpanProcessor(ConsoleSpanExporter()), resource)
        return cls(OtlpSpanQueue(settings.traces_endpoint(), registry, headers=settings.otlp_headers()), resource)

    def start(self) -> None:
        if self._queue is not None:
            self._queue.start()

    def after_slice(self) -> None:
        """Called by the recorder after each slice of its work: encode a few spans, cooperatively."""
        if self._queue is not None:
            self._queue.encode_some()

    async def aclose(self) -> None:
        if self._queue is not None:
            await self._queue.aclose()
        else:
            self._processor.shutdown()

    def emit(self, interaction: Interaction, trace: TraceContext, timings: SpanTimings, upstream: str) -> None:
        if not trace.sampled:
            return
        flags = _SAMPLED
        server_ctx = trace_api.SpanContext(trace.trace_id, trace.span_id, False, flags, _state(trace))
        parent = (
            trace_api.SpanContext(trace.trace_id, trace.parent_span_id, True, flags, _state(trace))
            if trace.parent_span_id is not None
            else None
        )
        name = span_name(interaction)
        status = _status(interaction)
        server_attrs: dict[str, Any] = {
            "gen_ai.operation.name": interaction.operation.value,
            "gen_ai.provider.name": interaction.provider,
            "http.request.method": interaction.method,
            "url.path": interaction.path,
            "http.response.status_code": interaction.status_code,
            "sentinel.interaction.id": interaction.id,
            "sentinel.outcome": interaction.outcome.value,
        }
        if interaction.model_requested:
            server_attrs["gen_ai.request.model"] = interaction.model_requested
        if interaction.error_type:
            server_attrs["error.type"] = interaction.error_type
        if timings.upstream_start_ns is not None:
            client_attrs = span_attributes(interaction)
            address = upstream.partition("://")[2].partition("/")[0]
            host, _, port = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
            client_attrs["server.address"] = host
            if port.isdigit():
                client_attrs["server.port"] = int(port)
            client_ctx = trace_api.SpanContext(trace.trace_id, trace.upstream_span_id, False, flags, _state(trace))
            self._processor.on_end(
                ReadableSpan(
                    name,
                    client_ctx,
                    server_ctx,
                    self._resource,
                    client_attrs,
                    kind=SpanKind.CLIENT,
                    status=status,
                    start_time=timings.upstream_start_ns,
                    end_time=timings.upstream_end_ns,
                    instrumentation_scope=self._scope,
                )
            )
        self._processor.on_end(
            ReadableSpan(
                name,
                server_ctx,
                parent,
                self._resource,
                server_attrs,
                kind=SpanKind.SERVER,
                status=status,
                start_time=timings.start_ns,
                end_time=timings.end_ns,
                instrumentation_scope=self._scope,
            )
        )

    def force_flush(self) -> None:
        self._processor.force_flush()


class _Resource(Resource):
    """A Resource whose hash is computed once: the OTLP encoder hashes it for every span it groups."""

    @functools.cached_property
    def _cached_hash(self) -> int:
        return super().__hash__()

    def __hash__(self) -> int:
        return self._cached_hash

    def __eq__(self, other: object) -> bool:
        return self is other or super().__eq__(other)


_SAMPLED = trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


def _state(trace: TraceContext) -> trace_api.TraceState | None:
    if not trace.tracestate:
        return None
    return trace_api.TraceState.from_header([trace.tracestate.decode("latin-1")])


def _status(interaction: Interaction) -> Status:
    if interaction.outcome is Outcome.ERROR or interaction.outcome is Outcome.REJECTED:
        return Status(StatusCode.ERROR, interaction.error_type)
    return _UNSET


@dataclass(slots=True)
class SpanTimings:
    start_ns: int
    end_ns: int
    upstream_start_ns: int | None
    upstream_end_ns: int | None


def span_name(interaction: Interaction) -> str:
    if interaction.operation is Operation.OTHER:
        return f"{interaction.method} {interaction.path}"
    model = interaction.model_requested
    return f"{interaction.operation.value} {model}" if model else interaction.operation.value


def span_attributes(i: Interaction) -> dict[str, Any]:
    """The GenAI inference span's attributes: metadata only, never content, never the raw end-user id.

    HTTP details and Sentinel's own ids are on the SERVER span only, to keep export cheap.
    """
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": i.operation.value,
        "gen_ai.provider.name": i.provider,
        "gen_ai.request.stream": i.stream,
    }
    if i.model_requested:
        attrs["gen_ai.request.model"] = i.model_requested
    if i.model_returned:
        attrs["gen_ai.response.model"] = i.model_returned
    for key in ("temperature", "top_p", "top_k", "max_tokens", "seed", "frequency_penalty", "presence_penalty"):
        value = i.sampling.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[f"gen_ai.request.{key}"] = value
    if i.finish_reason:
        attrs["gen_ai.response.finish_reasons"] = (i.finish_reason,)
    if i.usage.input_tokens is not None:
        attrs["gen_ai.usage.input_tokens"] = i.usage.input_tokens
    if i.usage.output_tokens is not None:
        attrs["gen_ai.usage.output_tokens"] = i.usage.output_tokens
    if i.usage.reasoning_tokens is not None:
        attrs["gen_ai.usage.reasoning.output_tokens"] = i.usage.reasoning_tokens
    if i.ttft_s is not None:
        attrs["gen_ai.response.time_to_first_chunk"] = i.ttft_s
    if i.error_type:
        attrs["error.type"] = i.error_type
    return attrs
