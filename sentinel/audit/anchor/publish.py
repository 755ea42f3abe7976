"""`AnchorPublisher`: every signed checkpoint, as it is made, to the anchors outside the operator's reach.

Each checkpoint's C2SP note is time-stamped by the RFC 3161 authority (when one is configured; the
token is kept in the spool, so a retry stamps nothing twice), then published with its token to the
Object Lock bucket, oldest first. A checkpoint that cannot be anchored stays in the spool and is
retried with backoff, never dropped; pruning keeps it until it is anchored. How far behind anchoring
is shows in metrics (`sentinel_audit_anchor_*`, alert `SentinelAuditAnchorLagging`), and strict mode
refuses traffic while the oldest checkpoint waiting is older than `audit.anchor_lag_max`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from sentinel.audit.anchor.s3 import AnchorConflict, AnchorError, ObjectLockAnchor
from sentinel.audit.anchor.tsa import TimestampAuthority, TimestampError
from sentinel.audit.background import Background
from sentinel.audit.spool import Spool
from sentinel.telemetry.metrics import ReadAtScrape

log = logging.getLogger("sentinel.audit")


class AnchorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "sentinel_audit_anchor_published", "Checkpoints published to the anchor bucket.", registry=registry
        )
        self.failures = Counter(
            "sentinel_audit_anchor_failures",
            "Failed attempts to anchor a checkpoint, by stage (timestamp, publish, conflict).",
            ["stage"],
            registry=registry,
        )
        for stage in ("timestamp", "publish", "conflict"):
            self.failures.labels(stage)  # every series from the start: rates and alerts see a 0
        self.backlog = 0
        self.oldest: float | None = None
        self.last_success: float | None = None


class AnchorPublisher(Background):
    name = "audit-anchor"

    def __init__(
        self,
        spool: Spool,
        anchor: ObjectLockAnchor,
        metrics: AnchorMetrics,
        *,
        timestamps: TimestampAuthority | None = None,
        clock: Callable[[], float] = time.time,
        max_backoff: float = 300.0,
        idle_interval: float = 5.0,
    ) -> None:
        self.spool = spool
        self.anchor = anchor
        self.metrics = metrics
        self.timestamps = timestamps
        self.clock = clock
        self.max_backoff = max_backoff
        self.idle_interval = idle_interval
        super().__init__()

    def register_gauges(self, gauges: ReadAtScrape) -> None:
        gauges.gauge(
            "sentinel_audit_anchor_backlog",
            "Signed checkpoints not yet anchored.",
            [],
            lambda: [((), float(self.metrics.backlog))],
        )
        gauges.gauge(
            "sentinel_audit_anchor_lag_seconds",
            "Age of the oldest signed checkpoint not yet anchored (0 when none waits).",
            [],
            lambda: [((), self.lag())],
        )
        gauges.gauge(
            "sentinel_audit_anchor_last_success_timestamp_seconds",
            "When a checkpoint was last anchored.",
            [],
            lambda: [((), self.metrics.last_success)] if self.metrics.last_success else [],
        )

    def lag(self) -> float:
        oldest = self.metrics.oldest
        return max(0.0, self.clock() - oldest) if oldest is not None else 0.0

    async def refresh(self) -> None:
        self.metrics.backlog, self.metrics.oldest = await self.spool.run(self.spool.anchor_backlog)

    async def publish_once(self, batch: int = 50) -> int:
        """Anchor the oldest waiting checkpoints; returns how many. Raises `AnchorError` or
        `TimestampError` at the first one that cannot be (it is retried later; nothing after it is
        published out of order)."""
        waiting = await self.spool.run(lambda: self.spool.unanchored(batch))
        done = 0
        for seq, checkpoint, token in waiting:
            note = str(checkpoint["note"]).encode()
            origin = note.split(b"\n", 1)[0].decode()
            if token is None and self.timestamps is not None:
                try:
                    token = await self.timestamps.stamp(note)
                except TimestampError:
                    self.metrics.failures.labels("timestamp").inc()
                    raise
                await self.spool.run(functools.partial(self.spool.save_token, seq, token))
            try:
                await self.anchor.publish(origin, seq, note, token)
            except AnchorConflict:
                # Another history holds this size under our origin: never overwritten, and loud.
                self.metrics.failures.labels("conflict").inc()
                raise
            except AnchorError:
                self.metrics.failures.labels("publish").inc()
                raise
            now = self.clock()
            await self.spool.run(functools.partial(self.spool.mark_anchored, seq, now))
            self.metrics.published.inc()
            self.metrics.last_success = now
            done += 1
        await self.refresh()
        return done

    async def _run(self) -> None:
        backoff = 1.0
        await self.refresh()
        while True:
            try:
                done = await self.publish_once()
            except (AnchorError, TimestampError) as exc:
                log.error("could not anchor audit checkpoints (they wait in the spool): %s", exc)
                await self.refresh()
                if self._stopping:
                    return
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            except Exception:
                log.exception("audit checkpoint anchoring failed; retrying")
                self.metrics.failures.labels("publish").inc()
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 1.0
            if done:
                continue
            if self._stopping:
                return
            await self._sleep(self.idle_interval)
