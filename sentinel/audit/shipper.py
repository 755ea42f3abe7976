"""`Shipper`: moves audit records from the spool to the store, in order, until none are left behind.

Keys ship before the records that need them, checkpoints after the records they cover. A failed
batch is retried with exponential backoff (1 s doubling to 60 s) for as long as it takes; since
writes are create-only with deterministic ids, a batch that partly landed before a failure is
simply created again and the duplicates are ignored. A record the store refuses as a fork (it holds
a different record under that id: two writers with one instance id) is counted, logged, and kept
in the spool apart, never retried; the rest of the batch ships. After a restart it resumes from the
spool.
"""

from __future__ import annotations

import functools
import logging
import time

import orjson

from sentinel.audit.background import Background
from sentinel.audit.spool import Spool
from sentinel.audit.store import AuditStore, StoreUnavailable
from sentinel.audit.trail import AuditMetrics

log = logging.getLogger("sentinel.audit.shipper")


def spans(doc_ids: list[str]) -> str:
    """Doc ids, runs of consecutive sequence numbers shortened to their ends: `a:01..a:09, a:12`."""
    runs: list[list[str]] = []  # [first, last] doc ids
    for doc_id in doc_ids:
        if runs and _follows(runs[-1][1], doc_id):
            runs[-1][1] = doc_id
        else:
            runs.append([doc_id, doc_id])
    return ", ".join(first if first == last else f"{first}..{last}" for first, last in runs)


def _follows(before: str, doc_id: str) -> bool:
    chain, _, seq = doc_id.rpartition(":")
    chain_before, _, seq_before = before.rpartition(":")
    return chain == chain_before and seq.isdigit() and seq_before.isdigit() and int(seq) == int(seq_before) + 1


class Shipper(Background):
    name = "audit-shipper"

    def __init__(
        self,
        spool: Spool,
        store: AuditStore,
        metrics: AuditMetrics,
        *,
        batch: int = 500,
        idle_interval: float = 0.5,
        max_backoff: float = 60.0,
        spool_retention: float = 24 * 3600.0,
        anchoring: bool = False,
    ) -> None:
        self.spool = spool
        self.store = store
        self.metrics = metrics
        self.batch = batch
        self.idle_interval = idle_interval
        self.max_backoff = max_backoff
        self.spool_retention = spool_retention
        self.anchoring = anchoring
        """Checkpoints are anchored (audit.anchor): pruning keeps those still waiting."""
        super().__init__()
        self.down_since: float | None = None

    async def ship_once(self) -> int:
        """Ship one batch; returns how many records it carried (0 when the spool is drained)."""
        keys, records, checkpoints = await self.spool.run(lambda: self.spool.unshipped(self.batch))
        if not (keys or records or checkpoints):
            return 0
        key_docs = [orjson.loads(k) for k in keys]
        if key_docs:
            await self.store.put_keys(key_docs)
        forks = await self.store.put_records([(r.doc_id, r.body) for r in records]) if records else []
        checkpoint_docs = [orjson.loads(c) for c in checkpoints]
        if checkpoint_docs:
            await self.store.put_checkpoints(checkpoint_docs)
        last_seq = records[-1].seq if records else None
        key_ids = [(k["kid"], k["kek_id"]) for k in key_docs]
        checkpoint_seqs = [c["seq"] for c in checkpoint_docs]
        seqs = {r.doc_id: r.seq for r in records}
        forked = [(seqs[f.doc_id], f.ours, f.theirs) for f in forks]

        def mark_shipped() -> None:
            # The backlog is recounted on the spool thread, in order with the trail's writes (which
            # count what they add there too): a batch committed meanwhile is never counted away.
            self.spool.mark_shipped(key_ids, last_seq, checkpoint_seqs, forked)
            self.metrics.unshipped, self.metrics.oldest_unshipped = self.spool.backlog()

        await self.spool.run(mark_shipped)
        self.metrics.shipped.inc(len(records) - len(forks))
        if forks:
            self.metrics.forked.inc(len(forks))
            log.error(
                "audit store holds different records under %d of our ids (%s): another writer uses this "
                "instance id; ours are kept in the spool, see `sentinel audit forks`",
                len(forks),
                spans([f.doc_id for f in forks]),
            )
        return len(records) + len(key_docs) + len(checkpoint_docs)

    async def _run(self) -> None:
        backoff = 1.0
        last_prune = 0.0
        while True:
            try:
                shipped = await self.ship_once()
            except StoreUnavailable as exc:
                self.metrics.ship_failures.inc()
                if self.down_since is None:
                    self.down_since = time.time()
                    log.warning("audit store unavailable, records stay in the spool: %s", exc)
                if self._stopping:
                    return
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            except Exception:
                log.exception("audit shipper failed; retrying")
                self.metrics.ship_failures.inc()
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if self.down_since is not None:
                log.info("audit store reachable again after %.0fs", time.time() - self.down_since)
                self.down_since = None
            backoff = 1.0
            if shipped:
                continue
            if self._stopping:
                return
            if time.time() - last_prune > 600:
                last_prune = time.time()
                prune = functools.partial(
                    self.spool.prune, time.time() - self.spool_retention, anchoring=self.anchoring
                )
                await self.spool.run(prune)
            await self._sleep(self.idle_interval)
