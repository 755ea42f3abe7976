"""`Recorder`: the one consumer behind the request path.

It takes each finished `Exchange`, builds the `Interaction`, observes the metrics, emits the spans
and offers the record to every sink. All of it runs on a task of its own, in small slices, so the
request path only ever pays for one O(1) `submit`; and while new requests are on their way to their
first byte (`Foreground`), slices wait for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

from sentinel.capture.build import build_interaction
from sentinel.cooperative import CATCH_UP_SECONDS, FOREGROUND_PATIENCE_SECONDS, SLICE_SECONDS, Foreground
from sentinel.proxy.exchange import Exchange
from sentinel.sinks import Mailbox, SinkRunner
from sentinel.telemetry.metrics import ProxyMetrics, ReadAtScrape
from sentinel.telemetry.tracing import SpanEmitter, SpanTimings

log = logging.getLogger("sentinel.recorder")

_perf = time.perf_counter

_BACKLOG = 256
"""Above this many waiting exchanges, record in `CATCH_UP_SECONDS` slices: recording must keep up,
even at some latency. Otherwise a slice is `SLICE_SECONDS` and at least one exchange (a streamed
one takes ~0.13 ms): about as long as a request that arrives meanwhile waits for the recorder."""
_DEFER_SECONDS = 0.001
"""When nothing else waits, a finished exchange is recorded this much later: a client sends its
next request the moment a response ends, and that request should not queue behind the recording
of the last one (at concurrency 1 it did, for ~0.6 ms: docs/benchmarks.md)."""

_STEP_ASIDE_RETRY_SECONDS = 0.1
"""How often a recorder that stopped stepping aside (its waits kept running out) tries again."""


class Recorder:
    def __init__(
        self,
        registry: CollectorRegistry,
        metrics: ProxyMetrics,
        sinks: Sequence[SinkRunner] = (),
        *,
        spans: SpanEmitter | None = None,
        capacity: int = 10_000,
        instance: str = "",
        provider: str = "auto",
        upstream_url: str = "",
        foreground: Foreground | None = None,
        patience: float = FOREGROUND_PATIENCE_SECONDS,
    ) -> None:
        self.metrics = metrics
        self.foreground = foreground
        self.patience = patience
        self.gave_up = 0.0
        """Moving share of recent waits for the foreground that ran out of patience."""
        self._retry_at = 0.0
        self.sinks = list(sinks)
        self.spans = spans
        self.instance = instance
        self.provider = provider
        self.upstream_url = upstream_url
        self.mailbox: Mailbox[Exchange] = Mailbox(capacity)
        self._dropped = Counter(
            "sentinel_recorder_dropped",
            "Exchanges not recorded because the recorder queue was full.",
            registry=registry,
        )
        self._failed = Counter(
            "sentinel_recorder_failures", "Exchanges the recorder failed to process.", registry=registry
        )
        self._task: asyncio.Task[None] | None = None

    def register_gauges(self, gauges: ReadAtScrape) -> None:
        gauges.gauge(
            "sentinel_recorder_queue_depth",
            "Exchanges waiting to be recorded.",
            [],
            lambda: [((), len(self.mailbox))],
        )
        gauges.gauge(
            "sentinel_sink_queue_depth",
            "Interactions waiting in each sink's queue.",
            ["sink"],
            lambda: [((runner.sink.name,), len(runner.mailbox)) for runner in self.sinks],
        )

    def submit(self, exchange: Exchange) -> None:
        """Called by the request path once per exchange. Never blocks; counts a drop when full."""
        if not self.mailbox.offer(exchange):
            self._dropped.inc()

    async def start(self) -> None:
        for runner in self.sinks:
            await runner.start()
        if self.spans is not None:
            self.spans.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="recorder")

    async def stop(self, grace: float = 10.0) -> None:
        """Record what is queued, then drain and stop the sinks."""
        self.mailbox.close()
        if self.foreground is not None:
            self.foreground.release()  # a recorder stepping aside goes on; once closed it never waits
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, grace)
            except TimeoutError:
                log.error("recorder did not drain within %.1fs; %d exchanges left", grace, len(self.mailbox))
        for runner in self.sinks:
            await runner.stop(grace)
        if self.spans is not None:
            await self.spans.aclose()

    async def _run(self) -> None:
        # Slices are bounded by time, not by count: streamed exchanges cost ten times plain ones,
        # and a fixed count of them blocked the loop for a millisecond at a time (docs/benchmarks.md).
        mailbox = self.mailbox
        while True:
            batch = await mailbox.take(1)
            if not batch:
                return
            if not mailbox and not mailbox.closed:
                await asyncio.sleep(_DEFER_SECONDS)
            if self.foreground is not None and len(mailbox) < _BACKLOG and not mailbox.closed:
                await self._step_aside(self.foreground)
            deadline = _perf() + (SLICE_SECONDS if len(mailbox) < _BACKLOG else CATCH_UP_SECONDS)
            self.record(batch[0])
            while mailbox and _perf() < deadline:
                self.record(mailbox.take_now(1)[0])
            if self.spans is not None:
                self.spans.after_slice()
            await asyncio.sleep(0)

    async def _step_aside(self, foreground: Foreground) -> None:
        """Let requests on their way to their first byte go first, while that pays.

        It pays when they start within `patience`, as a fast model server's do: a burst of new
        requests is then answered before the exchanges that just ended are recorded. It does not
        when they keep coming or a model server takes longer than that to answer: every wait would
        run out and only slow recording down. So once most recent waits ran out (`gave_up`, a moving
        share of the last eight or so), the recorder stops stepping aside, and tries again once
        every `_STEP_ASIDE_RETRY_SECONDS` (docs/benchmarks.md).
        """
        if not foreground.starting:
            return
        if self.gave_up >= 0.5 and _perf() < self._retry_at:
            return
        went_quiet = await foreground.quiet(self.patience)
        self.gave_up += ((0.0 if went_quiet else 1.0) - self.gave_up) / 8
        if self.gave_up >= 0.5:
            self._retry_at = _perf() + _STEP_ASIDE_RETRY_SECONDS

    def record(self, exchange: Exchange) -> None:
        try:
            interaction = exchange.interaction or build_interaction(
                exchange, instance=self.instance, provider=self.provider
            )
            self.metrics.observe(interaction)
            if self.spans is not None:
                self.spans.emit(interaction, exchange.trace, _timings(exchange), self.upstream_url)
        except Exception:
            self._failed.inc()
            log.exception("could not record exchange %s", exchange.id)
            return
        for runner in self.sinks:
            runner.offer(interaction)


def _timings(ex: Exchange) -> SpanTimings:
    base_ns = int(ex.started_at * 1e9)

    def at(t: float) -> int:
        return base_ns + int((t - ex.t_start) * 1e9)

    end = at(ex.t_end if ex.t_end is not None else ex.t_start)
    upstream_start = at(ex.t_upstream_start) if ex.t_upstream_start is not None else None
    return SpanTimings(base_ns, end, upstream_start, end if upstream_start is not None else None)
