"""From settings to work: open the key, target and repository of a plan, and run a backup or a prune
as one recorded job (lease taken, outcome written to the run log for /metrics)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sentinel.backup.chunking import ChunkerParams
from sentinel.backup.keys import BackupKey, load_key_file
from sentinel.backup.lease import Lease, LeaseHeld, live_leases
from sentinel.backup.progress import Progress
from sentinel.backup.prune import PruneReport, prune
from sentinel.backup.repository import Repository
from sentinel.backup.retention import RetentionPolicy
from sentinel.backup.run import BackupFailed, BackupRun, RunStats
from sentinel.backup.settings import BackupSettings, PlanSettings
from sentinel.backup.snapshot import Snapshot
from sentinel.backup.sources import Forbidden, Source, build_sources
from sentinel.backup.state import RunLog, RunRecord
from sentinel.backup.targets import Target, open_target
from sentinel.config import Settings

log = logging.getLogger("sentinel.backup")


class PlanNotFound(Exception):
    pass


@dataclass
class BackupContext:
    """Everything a job needs, resolved from `Settings` (paths relative to the data directory)."""

    settings: Settings
    clock: Callable[[], float] = time.time
    """The clock leases are written and judged by (epoch seconds); tests pass a fake one."""

    @property
    def backup(self) -> BackupSettings:
        return self.settings.backup

    def path(self, path: Path) -> Path:
        return self.settings.resolve_path(path)

    @property
    def key_path(self) -> Path:
        return self.path(self.backup.key_file)

    def key(self) -> BackupKey:
        return load_key_file(self.key_path)

    def plan(self, name: str) -> PlanSettings:
        try:
            return self.backup.plans[name]
        except KeyError:
            known = ", ".join(sorted(self.backup.plans)) or "none"
            raise PlanNotFound(f"no backup plan {name!r} (configured: {known})") from None

    def target(self, plan: str) -> Target:
        return open_target(self.backup.targets[self.plan(plan).target], self.settings.data_dir, clock=self.clock)

    def repository(self, plan: str, *, create: bool = False) -> Repository:
        params = ChunkerParams(self.backup.chunk_min_size, self.backup.chunk_avg_size, self.backup.chunk_max_size)
        repository = Repository.open(self.target(plan), self.key(), create=params if create else None)
        repository.seen = self.run_log()
        return repository

    def forbidden(self) -> Forbidden:
        return Forbidden({"key-encryption key": self.path(self.settings.key_file), "backup key": self.key_path})

    def sources(self, plan: str) -> list[Source]:
        config_file = type(self.settings).yaml_file
        return build_sources(self.plan(plan), self.settings.data_dir, self.forbidden(), config_file)

    def run_log(self) -> RunLog:
        return RunLog(self.path(self.backup.state_file))


@dataclass
class BackupOutcome:
    plan: str
    outcome: str  # success | failure | skipped
    started: float
    finished: float
    snapshot: Snapshot | None = None
    stats: RunStats | None = None
    error: str | None = None


def run_backup(
    context: BackupContext,
    plan: str,
    *,
    progress: Progress | None = None,
    scheduled_for: float | None = None,
    prune_wait: float = 600.0,
) -> BackupOutcome:
    """Take one snapshot of `plan` and record the outcome. `skipped` when another instance holds the plan's
    lease or already took the snapshot for this `scheduled_for` time; never raises for run failures."""
    started = time.time()
    outcome = BackupOutcome(plan, "failure", started, started)
    try:
        sources = context.sources(plan)  # refuses a forbidden plan before anything is touched
        repo = context.repository(plan, create=True)
        lease = Lease(
            repo.target,
            f"backup-{plan}",
            ttl=context.backup.lease_ttl,
            purpose=f"backup {plan}",
            clock=context.clock,
        )
        try:
            lease.acquire()
        except LeaseHeld as exc:
            outcome.outcome, outcome.error = "skipped", f"plan {plan} is already running: {exc}"
            return outcome
        try:
            _wait_for_prune(repo.target, prune_wait, context.clock)
            if scheduled_for is not None and any(s.scheduled_for == scheduled_for for s in repo.snapshots(plan)):
                outcome.outcome, outcome.error = "skipped", "another instance already took this scheduled snapshot"
                return outcome
            job = BackupRun(
                repo,
                plan,
                sources,
                concurrency=context.backup.upload_concurrency,
                progress=progress,
                scheduled_for=scheduled_for,
                clock=context.clock,
            )
            outcome.stats = job.stats
            snapshot = job.run()
            lease.check()
            job.commit(snapshot)
            outcome.snapshot, outcome.outcome = snapshot, "success"
        finally:
            lease.release()
    except Exception as exc:  # every failure is recorded and reported, none kills the scheduler
        outcome.error = str(exc) or type(exc).__name__
        if not isinstance(exc, BackupFailed):
            log.debug("backup of %s failed", plan, exc_info=True)
    finally:
        outcome.finished = time.time()
        if outcome.outcome != "skipped":
            _record(context, outcome)
    return outcome


def _wait_for_prune(target: Target, wait: float, clock: Callable[[], float] = time.time) -> None:
    deadline = time.monotonic() + wait
    while running := live_leases(target, "prune", now=clock()):
        if time.monotonic() > deadline:
            raise LeaseHeld(f"a prune is running ({running[0].describe(clock())}); backup not started")
        time.sleep(min(5.0, max(0.1, wait / 10)))


def _record(context: BackupContext, outcome: BackupOutcome) -> None:
    snapshot = outcome.snapshot
    try:
        context.run_log().record(
            RunRecord(
                "backup",
                outcome.plan,
                outcome.started,
                outcome.finished,
                outcome.outcome,
                size=snapshot.size if snapshot else None,
                uploaded=snapshot.uploaded_bytes if snapshot else None,
                snapshot=snapshot.id if snapshot else None,
                error=outcome.error,
            )
        )
    except Exception as exc:  # the backup itself is what matters; say so loudly
        log.error("could not record the backup outcome in %s: %s", context.run_log().path, exc)


def run_prune(
    context: BackupContext, plan: str | None = None, *, dry_run: bool = False, progress: Progress | None = None
) -> dict[str, PruneReport]:
    """Prune each target once, applying the retention of every plan that stores there."""
    names = [plan] if plan else sorted(context.backup.plans)
    by_target: dict[str, list[str]] = {}
    for name in names:
        by_target.setdefault(context.plan(name).target, []).append(name)
    reports = {}
    for target_name, plans in by_target.items():
        everyone = [p for p, s in context.backup.plans.items() if s.target == target_name]
        # Forget only for the plans asked for; but chunks are shared by all plans on the target.
        policies = {p: RetentionPolicy.from_settings(context.plan(p).retention) for p in plans}
        repo = context.repository(plans[0])
        log.info("pruning %s (plans %s; sharing the target: %s)", repo.target.describe(), plans, everyone)
        reports[target_name] = prune(
            repo,
            policies,
            dry_run=dry_run,
            lease_ttl=context.backup.lease_ttl,
            progress=progress,
            clock=context.clock,
        )
    return reports
