"""Cron schedules for backups and drills (APScheduler 3.x); each run is a separate `sentinel` process.

The scheduler only decides *when*. The work (chunking, hashing, encryption, upload, restore) runs
in a child process (`sentinel backup run PLAN --scheduled-at T`) at `backup.nice` CPU niceness, so
it never touches the proxy's event loop or GIL and yields the CPU to the proxy (docs/benchmarks.md
measures the proxy while a backup runs); the scheduler's worker thread just waits for the child. Misfires: jobs coalesce
(a backlog runs once) and may start up to `misfire_grace_time` late; on start, a run missed while
no scheduler was up (within the grace time, per the run log) is started at once. With several
instances, each fires, and the plan's lease in the target lets exactly one run; `--scheduled-at`
(the same cron time everywhere) lets a late instance see the snapshot is already taken.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from sentinel import children
from sentinel.backup.state import RunLog
from sentinel.children import Spawn
from sentinel.config import Settings
from sentinel.cron import local_timezone

log = logging.getLogger("sentinel.backup.scheduler")
SKIPPED_EXIT = 3


def previous_fire_time(trigger: CronTrigger, now: datetime, horizon: timedelta) -> datetime | None:
    """The latest fire time in (now - horizon, now], if any (APScheduler 3 only computes next ones)."""
    fire = trigger.get_next_fire_time(None, now - horizon)
    last = None
    while fire is not None and fire <= now:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return last


def spawn_sentinel(settings: Settings) -> Spawn:
    """Run `sentinel ARGS...` as a child at `backup.nice`; returns its exit status."""
    return children.spawn_sentinel(settings, nice=settings.backup.nice)


class BackupScheduler:
    def __init__(self, settings: Settings, *, spawn: Spawn | None = None) -> None:
        self.settings = settings
        self.spawn = spawn or spawn_sentinel(settings)
        backup = settings.backup
        self.timezone = backup.timezone or local_timezone()
        self.grace = backup.misfire_grace_time
        self.scheduler = BackgroundScheduler(
            timezone=self.timezone,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": self.grace},
        )
        self.triggers: dict[str, CronTrigger] = {}
        self.finished = threading.Condition()
        self.completed: list[tuple[str, int]] = []
        for plan, spec in sorted(backup.plans.items()):
            if spec.schedule:
                self._add(f"backup:{plan}", spec.schedule, ["backup", "run", plan])
            if spec.drill.schedule:
                self._add(f"drill:{plan}", spec.drill.schedule, ["drill", "run", plan])

    def _add(self, job_id: str, cron: str, args: list[str]) -> None:
        trigger = CronTrigger.from_crontab(cron, timezone=self.timezone)
        self.triggers[job_id] = trigger
        self.scheduler.add_job(self._run, trigger, args=[job_id, args], id=job_id, name=job_id)

    def _run(self, job_id: str, args: list[str]) -> None:
        now = datetime.now(self.triggers[job_id].timezone)
        fired = previous_fire_time(self.triggers[job_id], now, timedelta(seconds=self.grace))
        if fired is not None and args[0] == "backup":
            args = [*args, "--scheduled-at", str(fired.timestamp())]
        try:
            code = self.spawn(args)
        except Exception:
            log.exception("%s could not be started", job_id)
            code = -1
        if code == SKIPPED_EXIT:
            log.info("%s skipped: another instance is running it or already did", job_id)
        elif code != 0:
            log.error("%s failed (exit %d); see its log and sentinel_backup_runs_total", job_id, code)
        with self.finished:
            self.completed.append((job_id, code))
            self.finished.notify_all()

    def missed(self, now: datetime | None = None) -> list[str]:
        """Jobs whose latest fire time (within the grace time) passed with no run recorded since."""
        path = self.settings.resolve_path(self.settings.backup.state_file)
        runs = RunLog(path)
        latest = {("backup", p): r.started for p, r in runs.latest("backup").items()}
        latest |= {("drill", p): r.started for p, r in runs.latest("drill").items()}
        out = []
        for job_id, trigger in self.triggers.items():
            moment = now or datetime.now(trigger.timezone)
            fired = previous_fire_time(trigger, moment, timedelta(seconds=self.grace))
            kind, plan = job_id.split(":", 1)
            if fired is not None and latest.get((kind, plan), 0.0) < fired.timestamp():
                out.append(job_id)
        return out

    def start(self) -> None:
        self.scheduler.start()
        for job_id in self.missed():
            log.info("%s missed its last run while no scheduler was up; running it now", job_id)
            self.scheduler.modify_job(job_id, next_run_time=datetime.now(self.triggers[job_id].timezone))

    def shutdown(self, wait: bool = True) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)

    def jobs(self) -> list[dict[str, Any]]:
        return [
            {"id": job.id, "next_run": job.next_run_time.isoformat() if job.next_run_time else None}
            for job in self.scheduler.get_jobs()
        ]


def state_path(settings: Settings) -> Path:
    return settings.resolve_path(settings.backup.state_file)
