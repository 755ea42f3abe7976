"""The hook interface: where finished `Interaction` records go (a JSON-lines file, the audit trail, ...).

A sink is a plain class with three async methods. Each sink gets its own bounded queue and its own
consumer task, so a slow or failing sink never delays a request nor another sink: when its queue
is full, new records are dropped for that sink and counted (`sentinel_sink_dropped_total`), and
when `write` raises, the batch is counted as failed (`sentinel_sink_failures_total`) and logged.

    class PrintSink:
        name = "print"
        async def start(self) -> None: ...
        async def write(self, batch: Sequence[Interaction]) -> None:
            for interaction in batch:
                print(interaction.id, interaction.outcome)
        async def stop(self) -> None: ...

A sink that must not lose records (the audit trail) keeps its own durable spool behind `write`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter

from sentinel.interaction import Interaction

log = logging.getLogger("sentinel.sinks")

T = TypeVar("T")


class Sink(Protocol):
    name: str

    async def start(self) -> None:
        """Called once before the first `write`."""

    async def write(self, batch: Sequence[Interaction]) -> None:
        """Receive finished interactions, oldest first. May be slow; may raise."""

    async def stop(self) -> None:
        """Called once after the last `write` (the queue is drained first, within the shutdown grace)."""


class Mailbox(Generic[T]):
    """A bounded FIFO between a producer that must never wait and one consumer task.

    `offer` is O(1) and never blocks; beyond `capacity` it refuses and counts the drop.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T) -> bool:
        if len(self._items) >= self.capacity or self.closed:
            self.dropped += 1
            return False
        self._items.append(item)
        if not self._ready.is_set():
            self._ready.set()
        return True

    async def take(self, max_items: int) -> list[T]:
        """Wait for at least one item (or close) and return up to `max_items`, oldest first."""
        while not self._items:
            if self.closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        items = self._items
        count = min(max_items, len(items))
        return [items.popleft() for _ in range(count)]

    def take_now(self, max_items: int) -> list[T]:
        """Up to `max_items` already queued, without waiting."""
        items = self._items
        return [items.popleft() for _ in range(min(max_items, len(items)))]

    def close(self) -> None:
        self.closed = True
        self._ready.set()


class SinkRunner:
    """Runs one sink: its mailbox, its consumer task, its counters."""

    def __init__(
        self,
        sink: Sink,
        capacity: int,
        written: Counter,
        dropped: Counter,
        failures: Counter,
        batch_size: int = 256,
        linger: float = 0.05,
    ) -> None:
        self.sink = sink
        self.mailbox: Mailbox[Interaction] = Mailbox(capacity)
        self._batch_size = batch_size
        self._linger = linger
        self._written = written.labels(sink.name)
        self._dropped = dropped.labels(sink.name)
        self._failures = failures.labels(sink.name)
        self._task: asyncio.Task[None] | None = None
        self._last_error_log = 0.0

    def offer(self, interaction: Interaction) -> None:
        if not self.mailbox.offer(interaction):
            self._dropped.inc()

    async def start(self) -> None:
        await self.sink.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sink:{self.sink.name}")

    async def _run(self) -> None:
        while True:
            batch = await self.mailbox.take(self._batch_size)
            if not batch:
                return
            if len(batch) < self._batch_size and self._linger and not self.mailbox.closed:
                # Give a trickle of records a moment to become a batch: one write per batch, not per record.
                await asyncio.sleep(self._linger)
                batch += self.mailbox.take_now(self._batch_size - len(batch))
            try:
                await self.sink.write(batch)
            except Exception as exc:
                self._failures.inc(len(batch))
                now = time.monotonic()
                if now - self._last_error_log > 10:
                    self._last_error_log = now
                    log.error("sink %s failed to write %d interactions: %r", self.sink.name, len(batch), exc)
            else:
                self._written.inc(len(batch))

    async def stop(self, grace: float) -> None:
        self.mailbox.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, grace)
            except TimeoutError:
                log.error(
                    "sink %s did not drain within %.1fs; %d interactions left", self.sink.name, grace, len(self.mailbox)
                )
        try:
            await self.sink.stop()
        except Exception as exc:
            log.error("sink %s failed to stop cleanly: %r", self.sink.name, exc)


def sink_counters(registry: CollectorRegistry) -> tuple[Counter, Counter, Counter]:
    written = Counter("sentinel_sink_written", "Interactions a sink accepted.", ["sink"], registry=registry)
    dropped = Counter(
        "sentinel_sink_dropped", "Interactions dropped because a sink's queue was full.", ["sink"], registry=registry
    )
    failures = Counter(
        "sentinel_sink_failures", "Interactions in batches a sink failed to write.", ["sink"], registry=registry
    )
    return written, dropped, failures
