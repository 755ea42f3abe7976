"""`AuditTrail`: seals entries into chained, encrypted records and makes them durable in group commits.

Callers `await append(...)`; entries that arrive while a commit is in flight wait together and go
in the next transaction, so a busy proxy pays one fsync per batch, not per record. Sealing
(encryption, chaining, hashing) happens on the event loop in small slices, right before the batch
is written: the chain head only advances once a batch is durable, and a failed write rolls it back.

Two ways in:
- `AuditSink` (mode `best_effort`): a sink behind the recorder; the proxy never waits; a record
  that cannot be written is counted in `sentinel_audit_records_lost_total`.
- `AuditJournal` (mode `strict`): on the request path; a request is recorded (as
  `interaction_started`) before it is forwarded and the completed record is durable before the
  response's last byte is released. A request that cannot be recorded is refused with 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from sentinel.audit import record as records
from sentinel.audit.chain import ChainHead, make_checkpoint
from sentinel.audit.keyring import KeyRing
from sentinel.audit.note import Checkpoint, origin_of, sign_checkpoint
from sentinel.audit.record import Event
from sentinel.audit.signer import Signer
from sentinel.audit.spool import Row, Spool, SpoolUnavailable
from sentinel.audit.tiles import TileReader, TreeBuilder
from sentinel.audit.tlog import CompactRange, leaf_hash
from sentinel.capture.build import build_interaction, request_interaction
from sentinel.cooperative import Slices
from sentinel.interaction import Interaction
from sentinel.proxy.exchange import Exchange
from sentinel.proxy.hooks import JournalUnavailable
from sentinel.telemetry.metrics import ReadAtScrape

log = logging.getLogger("sentinel.audit")
DEFAULT_ORIGIN_PREFIX = "sentinel/audit"
"""Checkpoint origins are `<prefix>/<instance>` (`audit.log_origin`)."""


@dataclass(slots=True)
class Entry:
    kind: str
    interaction: Interaction | None = None
    event: Event | None = None


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "sentinel_audit_records_written", "Audit records made durable in the spool.", registry=registry
        )
        self.lost = Counter(
            "sentinel_audit_records_lost",
            "Interactions that could not be recorded (best_effort mode: served anyway).",
            registry=registry,
        )
        self.refused = Counter(
            "sentinel_audit_refused",
            "Requests refused or cut because the audit trail could not record them (strict mode).",
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "sentinel_audit_commit_duration_seconds",
            "Time to make one group commit durable.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.batch_size = Histogram(
            "sentinel_audit_commit_batch_records",
            "Records per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.shipped = Counter("sentinel_audit_shipped", "Audit records accepted by the store.", registry=registry)
        self.forked = Counter(
            "sentinel_audit_records_forked",
            "Audit records the store refused because it holds a different record under the same id "
            "(two writers share an instance id); kept in the spool (`sentinel audit forks`).",
            registry=registry,
        )
        self.ship_failures = Counter(
            "sentinel_audit_ship_failures", "Failed attempts to ship a batch to the store.", registry=registry
        )
        self.unshipped = 0
        self.oldest_unshipped: float | None = None
        self.last_checkpoint: float | None = None

    def register_gauges(self, gauges: ReadAtScrape) -> None:
        gauges.gauge(
            "sentinel_audit_spool_records",
            "Audit records in the spool not yet shipped to the store.",
            [],
            lambda: [((), self.unshipped)],
        )
        gauges.gauge(
            "sentinel_audit_shipping_lag_seconds",
            "Age of the oldest audit record not yet shipped to the store (0 when none).",
            [],
            lambda: [((), time.time() - self.oldest_unshipped if self.oldest_unshipped else 0.0)],
        )
        gauges.gauge(
            "sentinel_audit_last_checkpoint_timestamp_seconds",
            "When this instance last signed a chain checkpoint.",
            [],
            lambda: [((), self.last_checkpoint)] if self.last_checkpoint else [],
        )


class AuditTrail:
    def __init__(
        self,
        spool: Spool,
        instance: str,
        metrics: AuditMetrics,
        *,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 300.0,
        origin_prefix: str = DEFAULT_ORIGIN_PREFIX,
    ) -> None:
        self.spool = spool
        self.keyring: KeyRing | None = None
        """Set by `start`; until then (or if the spool cannot be opened) every append fails."""
        self.unavailable = "the audit trail has not started"
        self.instance = instance
        self.metrics = metrics
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self._head = ChainHead()
        self.origin = origin_of(origin_prefix, instance)
        self._tree: TreeBuilder | None = None
        """The chain's Merkle tree (its tiles in the spool), None for a spool written before there was one."""
        self._range = CompactRange()
        self._last_checkpoint: dict[str, Any] | None = None
        self._pending: list[tuple[Entry, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._checkpoint_requested = False
        self.on_checkpoint: Callable[[], None] | None = None
        """Called once a signed checkpoint is durable (the anchor publisher's nudge)."""
        self.anchor_lag: Callable[[], float] | None = None
        """Seconds the oldest checkpoint has waited to be anchored, when anchoring is configured."""
        self.anchor_lag_max = float("inf")
        self.write_failure: tuple[float, str, int] | None = None
        """(when, why, the spool's size then) the last commit failed, until one succeeds: `/readyz` reads it."""
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, keyring: KeyRing) -> None:
        self._head = await self.spool.run(self.spool.head)
        self._tree, self._range = await self.spool.run(self._resume_tree)
        self._last_checkpoint = await self.spool.run(self.spool.last_checkpoint)
        if self._last_checkpoint is not None:
            self.metrics.last_checkpoint = self._last_checkpoint["time"]
        count, oldest = await self.spool.run(self.spool.backlog)
        self.metrics.unshipped, self.metrics.oldest_unshipped = count, oldest
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="audit-checkpoints")
        self.keyring = keyring
        log.info("audit trail for instance %s at sequence %d", self.instance, self._head.seq)

    def _resume_tree(self) -> tuple[TreeBuilder | None, CompactRange]:
        size = self._head.seq
        if size and not self.spool.has_tiles():
            log.warning(
                "the audit spool of %s predates Merkle checkpoints: its checkpoints carry no tree root "
                "until a new chain starts",
                self.instance,
            )
            return None, CompactRange()
        tree = TreeBuilder.resume(size, self.spool.tile)
        return tree, tree.compact_range(
            TileReader(lambda level, index: tree.tile(level, index) or self.spool.tile(level, index))
        )

    async def stop(self) -> None:
        """Write what is pending plus a final checkpoint, then stop."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self.keyring is None:
            return
        self._checkpoint_requested = True
        self._ensure_flushing()
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)

    @property
    def head(self) -> ChainHead:
        return self._head

    # -- appending -----------------------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> asyncio.Future[None]:
        """Queue entries; the returned future resolves once they are durable (or fails)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._closed or self.keyring is None:
            reason = "the audit trail is shutting down" if self._closed else self.unavailable
            done.set_exception(JournalUnavailable(reason))
            return done
        if not entries:
            done.set_result(None)
            return done
        last = len(entries) - 1
        for index, entry in enumerate(entries):
            # Only the last entry's future is handed out; the batch is committed atomically.
            self._pending.append((entry, done if index == last else loop.create_future()))
        self._ensure_flushing()
        return done

    def _ensure_flushing(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush(), name="audit-flush")

    async def record_event(self, event: Event) -> None:
        await self.append([Entry(records.EVENT, event=event)])

    async def _flush(self) -> None:
        while self._pending or self._checkpoint_requested:
            batch, self._pending = self._pending, []
            force, self._checkpoint_requested = self._checkpoint_requested, False
            await self._commit(batch, force_checkpoint=force)

    async def _commit(self, batch: list[tuple[Entry, asyncio.Future[None]]], force_checkpoint: bool = False) -> None:
        started = time.perf_counter()
        keyring = self.keyring
        assert keyring is not None
        head = ChainHead(self._head.seq, self._head.hash, self._head.recorded_at)
        tree = self._tree.copy() if self._tree is not None else None
        tree_range = self._range.copy()
        rows: list[Row] = []
        slices = Slices()  # a record takes ~20 µs to seal
        try:
            for entry, _ in batch:
                doc, stored = records.seal_encoded(
                    keyring,
                    instance=self.instance,
                    seq=head.seq + 1,
                    prev_hash=head.hash,
                    kind=entry.kind,
                    interaction=entry.interaction,
                    event=entry.event,
                )
                head = ChainHead(doc["seq"], doc["hash"], doc["recorded_at"])
                rows.append(Row(doc["seq"], doc["doc_id"], doc["kind"], doc["recorded_at"], stored))
                if slices.due():
                    await slices.pause()
            signer = keyring.signing_key() if self._checkpoint_due(head=head, force=force_checkpoint) else None
            checkpoint = None
            if rows or signer is not None:
                last = self._last_checkpoint
                checkpoint = await self.spool.run(
                    lambda: self._grow_and_write(rows, tree, tree_range, head, last, signer)
                )
        except Exception as exc:  # the chain head stays where the spool is
            error = exc if isinstance(exc, SpoolUnavailable) else SpoolUnavailable(f"{type(exc).__name__}: {exc}")
            log.error("audit spool write failed for %d records: %s", len(rows), error)
            self.write_failure = (time.time(), str(error), self.spool.used_bytes)
            for _, future in batch:
                if not future.done():
                    future.set_exception(JournalUnavailable(str(error)))
            return
        self._head = head
        self.write_failure = None
        self._tree, self._range = tree, tree_range
        if checkpoint is not None:
            self._last_checkpoint = checkpoint
            self.metrics.last_checkpoint = checkpoint["time"]
            if self.on_checkpoint is not None:
                self.on_checkpoint()
        if rows:
            self.metrics.written.inc(len(rows))
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(rows))
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _grow_and_write(
        self,
        rows: list[Row],
        tree: TreeBuilder | None,
        tree_range: CompactRange,
        head: ChainHead,
        last: dict[str, Any] | None,
        signer: tuple[str, Signer] | None,
    ) -> dict[str, Any] | None:
        """On the spool thread, off the event loop: the batch's leaves into the Merkle tree (a SHA-256
        over each stored record), the checkpoint signed if one is due, then all of it made durable.
        `tree` and `tree_range` are the batch's own copies: they become the trail's once this returns."""
        if tree is not None:
            for row in rows:
                leaf = leaf_hash(row.body)
                tree.append(leaf)
                tree_range.append(leaf)
        checkpoint = None
        if signer is not None:
            kid, key = signer
            note = (
                sign_checkpoint(Checkpoint(self.origin, head.seq, tree_range.root()), key) if tree is not None else None
            )
            checkpoint = make_checkpoint(self.instance, head, last, kid, key, note)
        self._write(rows, checkpoint, tree.take_changed() if tree is not None else [])
        return checkpoint

    def _write(self, rows: list[Row], checkpoint: dict[str, Any] | None, tiles: list[tuple[int, int, bytes]]) -> None:
        """On the spool thread: make the batch durable, then count it as unshipped. The shipper
        recounts the backlog on that thread too (`Shipper.ship_once`), so the two updates apply in
        the order the spool saw them and neither overwrites the other with a stale count."""
        self.spool.write(rows, checkpoint, tiles)
        if rows:
            self.metrics.unshipped += len(rows)
            if self.metrics.oldest_unshipped is None:
                self.metrics.oldest_unshipped = rows[0].recorded_at

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoint_due(self, head: ChainHead | None = None, force: bool = False) -> bool:
        head = head or self._head
        last = self._last_checkpoint
        if head.seq == 0 or (last is not None and last["seq"] >= head.seq):
            return False
        if force or last is None:
            return True
        return bool(
            head.seq - last["seq"] >= self.checkpoint_every or time.time() - last["time"] >= self.checkpoint_interval
        )

    async def _tick(self) -> None:
        """Sign a checkpoint for a quiet chain once the interval has passed; pick up key changes
        made by `sentinel keys rotate|rewrap` in another process."""
        while True:
            await asyncio.sleep(min(self.checkpoint_interval / 4, 5.0))
            if self.keyring is not None:
                try:
                    self.keyring.refresh()
                except Exception as exc:
                    log.error("could not refresh audit keys: %s", exc)
            if self._checkpoint_due():
                self._checkpoint_requested = True
                self._ensure_flushing()


class AuditSink:
    """`best_effort` mode: records interactions after the fact; never slows or fails a request."""

    name = "audit"

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    async def start(self) -> None:
        pass

    async def write(self, batch: Sequence[Interaction]) -> None:
        try:
            await self.trail.append([Entry(records.INTERACTION, interaction=i) for i in batch])
        except JournalUnavailable:
            self.trail.metrics.lost.inc(len(batch))

    async def stop(self) -> None:
        pass


class AuditJournal:
    """`strict` mode: the request path waits for durability, twice per call (see module docstring)."""

    def __init__(self, trail: AuditTrail, *, instance: str = "", provider: str = "auto") -> None:
        self.trail = trail
        self.instance = instance
        self.provider = provider

    async def begin(self, exchange: Exchange) -> None:
        trail = self.trail
        if trail.anchor_lag is not None:
            lag = trail.anchor_lag()
            if lag > trail.anchor_lag_max:
                trail.metrics.refused.inc()
                raise JournalUnavailable(
                    f"audit checkpoints have not been anchored for {lag:.0f} s (audit.anchor_lag_max is "
                    f"{trail.anchor_lag_max:.0f} s): strict mode refuses until the anchor is reachable"
                )
        started = request_interaction(exchange, instance=self.instance, provider=self.provider)
        try:
            await self.trail.append([Entry(records.INTERACTION_STARTED, interaction=started)])
        except JournalUnavailable:
            self.trail.metrics.refused.inc()
            raise

    async def complete(self, exchange: Exchange) -> None:
        interaction = build_interaction(exchange, instance=self.instance, provider=self.provider)
        exchange.interaction = interaction  # the recorder reuses it instead of parsing twice
        try:
            await self.trail.append([Entry(records.INTERACTION, interaction=interaction)])
        except JournalUnavailable:
            self.trail.metrics.refused.inc()
            raise
