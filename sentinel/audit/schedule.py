"""Cron schedules of continuous verification (APScheduler 3); each check runs in its own `sentinel` process.

As with scheduled backups, the scheduler only decides *when*: the check runs in a child
(`sentinel audit verify --scheduled incremental|full`) at CPU niceness 10, so a full check over
years of records never takes the proxy's event loop or GIL. The jobs share one worker thread (a
full check and an incremental one never overlap here), and the child takes the state file's lock
(a check started by hand meanwhile is skipped). On start, a check whose cron time passed since its
last run, while no scheduler was up, runs at once. Cron times are in `backup.timezone` (default:
local time), like the backup schedules.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from sentinel.audit.settings import AuditSettings
from sentinel.audit.watch import SKIPPED_EXIT, Check, CheckRunning, StateFile
from sentinel.children import Spawn, spawn_sentinel
from sentinel.config import Settings
from sentinel.cron import local_timezone, longest_gap

log = logging.getLogger("sentinel.audit.schedule")
NICE = 10
"""CPU niceness of a check's process, as of verification's worker processes."""


def schedules(audit: AuditSettings) -> dict[Check, str]:
    """The checks that have a cron time, with it."""
    crons: dict[Check, str | None] = {"incremental": audit.verify_schedule, "full": audit.verify_full_schedule}
    return {check: cron for check, cron in crons.items() if cron is not None}


def intervals(audit: AuditSettings) -> dict[str, float]:
    """Each scheduled check's longest gap between runs, in seconds (what the stale alert measures in)."""
    return {check: longest_gap(cron) for check, cron in schedules(audit).items()}


def spawn_check(settings: Settings, running: set[subprocess.Popen[bytes]] | None = None) -> Spawn:
    """Run `sentinel ARGS...` as a child at niceness `NICE`; it is in `running` while it runs."""
    return spawn_sentinel(settings, nice=NICE, running=running)


class VerifySchedule:
    """The incremental and the full check at their cron times (`audit.verify_schedule`, `verify_full_schedule`)."""

    def __init__(
        self, settings: Settings, *, spawn: Spawn | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.running: set[subprocess.Popen[bytes]] = set()
        self.spawn = spawn or spawn_check(settings, self.running)
        self.clock = clock
        self.state = StateFile(settings.resolve_path(settings.audit.verify_state_file))
        self.timezone = settings.backup.timezone or local_timezone()
        # One worker: checks queue behind each other, however late (coalesced, one of each at most).
        self.scheduler = BackgroundScheduler(
            timezone=self.timezone,
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.triggers: dict[Check, CronTrigger] = {}
        self.finished = threading.Condition()
        self.completed: list[tuple[str, int]] = []
        for check, cron in schedules(settings.audit).items():
            trigger = CronTrigger.from_crontab(cron, timezone=self.timezone)
            self.triggers[check] = trigger
            self.scheduler.add_job(self._run, trigger, args=[check], id=_job_id(check), name=_job_id(check))

    def _run(self, check: Check) -> None:
        try:
            code = self.spawn(["audit", "verify", "--scheduled", check])
        except Exception:
            log.exception("audit verification (%s) could not be started", check)
            code = -1
        if code == SKIPPED_EXIT:
            log.info("audit verification (%s) skipped: another check is running", check)
        elif code not in (0, 1):  # 1: findings, which the check itself logged
            log.error("audit verification (%s) failed (exit %d); see sentinel_audit_verify_ok", check, code)
        with self.finished:
            self.completed.append((check, code))
            self.finished.notify_all()

    def missed(self, now: float | None = None) -> list[Check]:
        """Checks with a cron time after their last run began (or after the schedule began) and not after `now`."""
        state = self.state.load()
        moment = datetime.fromtimestamp(self.clock() if now is None else now, UTC)
        out: list[Check] = []
        for check, trigger in self.triggers.items():
            last = state.history(check).last
            since = last.started if last is not None else state.scheduled_since
            if since is None:
                continue
            fire = trigger.get_next_fire_time(None, datetime.fromtimestamp(since, UTC) + timedelta(microseconds=1))
            if fire is not None and fire <= moment:
                out.append(check)
        return out

    def start(self) -> None:
        now = self.clock()
        self._began(now)
        self.scheduler.start()
        for check in self.missed(now):
            log.info("audit verification (%s) missed its time while no scheduler was up; running it now", check)
            self.scheduler.modify_job(_job_id(check), next_run_time=datetime.now(self.triggers[check].timezone))

    def _began(self, now: float) -> None:
        """Remember when checks were first scheduled here: the stale alert counts from it until one succeeds."""
        if not self.triggers:
            return
        try:
            with self.state.lock():
                state = self.state.load()
                if state.scheduled_since is None:
                    state.scheduled_since = now
                    self.state.save(state)
        except CheckRunning:
            pass  # a check is running: it records its own outcome
        except OSError as exc:
            log.error("cannot write the audit verification state %s: %s", self.state.path, exc)

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling, and stop a running check: it records nothing, and the next one does its work."""
        for child in list(self.running):
            with contextlib.suppress(OSError):
                child.terminate()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)

    def jobs(self) -> list[dict[str, Any]]:
        """Each job's id, trigger and, once started, next run time."""
        return [
            {
                "id": job.id,
                "trigger": str(job.trigger),
                "next_run": job.next_run_time.isoformat() if getattr(job, "next_run_time", None) else None,
            }
            for job in self.scheduler.get_jobs()
        ]


def _job_id(check: Check) -> str:
    return f"verify:{check}"
