"""`backup prune`: forget snapshots the retention policy no longer keeps, then delete unreferenced chunks.

Safety rules. A chunk is deleted only if no remaining snapshot, of any plan, names it. The prune
holds the exclusive `prune` lease and refuses to start while any `backup-*` lease is live (and
backups refuse to start while it holds it), so a running backup that decided to reuse an existing
chunk cannot lose it underneath. Snapshots of plans not in the configuration are never forgotten.
When Object Lock refuses a delete, that is reported and the prune carries on: a locked snapshot
stays (and so do its chunks, which it still references), a locked chunk simply stays. Forgotten
snapshots leave the signed snapshot index before their manifests are deleted, so a prune is never
reported as a missing snapshot. A damaged manifest (its chunks unknown), a snapshot the index
names but that is missing, or an index cut back stops the prune before it forgets anything: it says
so and forgets no snapshot and deletes no chunk, until the loss is acknowledged (`backup forget
--lost`, recorded in the signed index). Otherwise retention could forget the older, intact
snapshots while the newest ones are missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sentinel.backup.lease import Lease, LeaseHeld, live_leases
from sentinel.backup.progress import Progress
from sentinel.backup.repository import Repository, chunk_key, snapshot_key
from sentinel.backup.retention import RetentionPolicy
from sentinel.backup.targets import ObjectLocked, TargetError

log = logging.getLogger("sentinel.backup")


@dataclass
class PruneReport:
    dry_run: bool
    kept: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    chunks_deleted: int = 0
    bytes_deleted: int = 0
    chunks_in_use: int = 0
    locked: list[tuple[str, datetime | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def prune(
    repo: Repository,
    policies: Mapping[str, RetentionPolicy],
    *,
    dry_run: bool = False,
    lease_ttl: float = 300.0,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
) -> PruneReport:
    """`clock` is what leases are written and judged by (see `Lease`)."""
    progress = progress or Progress()
    report = PruneReport(dry_run)
    with Lease(repo.target, "prune", ttl=lease_ttl, purpose="prune", clock=clock) as lease:
        now = clock()
        running = live_leases(repo.target, "backup-", now=now)
        if running:
            raise LeaseHeld("a backup is running (" + "; ".join(r.describe(now) for r in running) + "); prune later")
        catalog = repo.catalog()
        if catalog.problems():
            # Unsure which snapshots exist: forgetting by retention now could delete the only intact
            # copies (the newest ones missing, the older ones "expired"), and deleting chunks could
            # hurt a damaged one. Nothing is forgotten or deleted until the problem is resolved.
            report.errors.extend(catalog.problems())
            report.kept.extend(s.id for s in catalog.snapshots)
            return report
        snapshots = catalog.snapshots
        remaining = {s.id: s for s in snapshots}
        forgetting = []
        for plan in sorted({s.plan for s in snapshots}):
            mine = [s for s in snapshots if s.plan == plan]
            policy = policies.get(plan)
            if policy is None:  # unknown plan: keep everything, never guess
                report.kept.extend(s.id for s in mine)
                continue
            keep, forget = policy.apply(mine)
            report.kept.extend(s.id for s in keep)
            forgetting.extend(forget)
        if forgetting and not dry_run:
            repo.update_index(remove={s.id for s in forgetting})
        for snapshot in forgetting:
            lease.check()
            if dry_run:
                report.forgotten.append(snapshot.id)
                del remaining[snapshot.id]
                continue
            try:
                repo.delete_snapshot(snapshot.id)
            except ObjectLocked as exc:
                report.locked.append((snapshot_key(snapshot.id), exc.until))
                report.kept.append(snapshot.id)
                continue
            except TargetError as exc:
                report.errors.append(f"snapshot {snapshot.id}: {exc}")
                report.kept.append(snapshot.id)
                continue
            report.forgotten.append(snapshot.id)
            del remaining[snapshot.id]
        if report.errors:
            # Unsure which snapshots exist: deleting chunks now could hurt one of them.
            return report
        referenced: set[str] = set()
        for snapshot in remaining.values():
            referenced |= snapshot.chunk_ids()
        report.chunks_in_use = len(referenced)
        unreferenced = [(cid, size) for cid, size in repo.chunk_sizes().items() if cid not in referenced]
        progress.begin("deleting unreferenced chunks", len(unreferenced))
        for chunk_id, size in unreferenced:
            lease.check()
            if not dry_run:
                try:
                    repo.target.delete(chunk_key(chunk_id))
                except ObjectLocked as exc:
                    report.locked.append((chunk_key(chunk_id), exc.until))
                    progress.advance(1)
                    continue
                except TargetError as exc:
                    report.errors.append(f"chunk {chunk_id}: {exc}")
                    progress.advance(1)
                    continue
            report.chunks_deleted += 1
            report.bytes_deleted += size
            progress.advance(1)
        progress.end()
    return report
