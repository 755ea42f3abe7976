"""The scheduler: cron times, misfire catch-up, work in child processes, one run across instances."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from apscheduler.triggers.cron import CronTrigger

from sentinel.backup.jobs import BackupContext
from sentinel.backup.scheduler import SKIPPED_EXIT, BackupScheduler, previous_fire_time, spawn_sentinel
from sentinel.backup.state import RunRecord
from sentinel.config import load_settings
from tests.backup.conftest import write_model
from tests.conftest import Running
from tests.support.upstream import ScriptedUpstream


def test_previous_fire_time() -> None:
    trigger = CronTrigger.from_crontab("0 2 * * *", timezone=UTC)
    now = datetime(2025, 3, 10, 2, 30, tzinfo=UTC)
    assert previous_fire_time(trigger, now, timedelta(hours=1)) == datetime(2025, 3, 10, 2, 0, tzinfo=UTC)
    assert previous_fire_time(trigger, now + timedelta(hours=2), timedelta(hours=1)) is None


def config(tmp_path: Path, data_dir: Path, cron: str, drill: str | None = "0 4 * * sun", **backup: Any) -> Path:
    write_model(tmp_path / "models", {"w.bin": 200_000})
    path = tmp_path / f"sentinel-{data_dir.name}.yaml"
    section = {
        "timezone": "UTC",
        "misfire_grace_time": 3600,
        "plans": {
            "m": {
                "sources": [{"kind": "path", "path": str(tmp_path / "models")}],
                "schedule": cron,
                "drill": {"schedule": drill},
            }
        },
        **backup,
    }
    path.write_text(yaml.safe_dump({"data_dir": str(data_dir), "backup": section}))
    return path


def test_missed_runs_within_the_grace_time_are_caught_up(tmp_path: Path, data_dir: Path) -> None:
    settings = load_settings(config(tmp_path, data_dir, "0 2 * * *"))
    scheduler = BackupScheduler(settings, spawn=lambda args: 0)
    assert set(scheduler.triggers) == {"backup:m", "drill:m"}
    at = datetime(2025, 3, 10, 2, 30, tzinfo=UTC)
    assert scheduler.missed(at) == ["backup:m"]
    assert scheduler.missed(at + timedelta(hours=1, minutes=1)) == []  # too late: wait for the next one
    sunday = datetime(2025, 3, 9, 4, 10, tzinfo=UTC)  # the default drill: Sundays 04:00
    assert scheduler.missed(sunday) == ["drill:m"]
    BackupContext(settings).run_log().record(
        RunRecord("backup", "m", datetime(2025, 3, 10, 2, 1, tzinfo=UTC).timestamp(), 0.0, "success")
    )
    assert scheduler.missed(at) == []


def wait_for(scheduler: BackupScheduler, count: int) -> list[tuple[str, int]]:
    with scheduler.finished:
        assert scheduler.finished.wait_for(lambda: len(scheduler.completed) >= count, timeout=90)
    return scheduler.completed


def test_each_instance_fires_but_only_one_takes_the_snapshot(tmp_path: Path, data_dir: Path) -> None:
    """Two instances with their own data dirs and one shared repository, both missing the same cron time."""
    earlier = datetime.now(UTC) - timedelta(minutes=5)
    cron = f"{earlier.minute} {earlier.hour} * * *"
    shared = {
        "targets": {"default": {"kind": "local", "path": str(tmp_path / "shared-repo")}},
        "key_file": str(data_dir / "keys" / "backup.key"),
    }
    first = BackupScheduler(load_settings(config(tmp_path, data_dir, cron, drill=None, **shared)))
    other_dir = tmp_path / "instance-2"
    second = BackupScheduler(load_settings(config(tmp_path, other_dir, cron, drill=None, **shared)))
    for scheduler in (first, second):
        scheduler.start()  # catches up the missed run at once, in a child `sentinel backup run` process
        try:
            outcome = dict(wait_for(scheduler, 1))
        finally:
            scheduler.shutdown()
        scheduler.outcome = outcome  # type: ignore[attr-defined]
    assert first.outcome["backup:m"] == 0  # type: ignore[attr-defined]
    assert second.outcome["backup:m"] == SKIPPED_EXIT  # type: ignore[attr-defined]
    repo = BackupContext(first.settings).repository("m")
    snapshots = repo.snapshots("m")
    assert len(snapshots) == 1
    fired = earlier.replace(second=0, microsecond=0).timestamp()
    assert snapshots[0].scheduled_for == fired
    assert BackupContext(first.settings).run_log().latest("backup")["m"].outcome == "success"
    assert BackupContext(second.settings).run_log().latest("backup") == {}  # a skip is not a run


def test_serve_can_run_the_scheduler_without_doing_the_work_itself(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    running = start_sentinel(upstream.url, backup={"schedule_in_serve": True, "timezone": "UTC"})
    scheduler = running.sentinel.extras["backup_scheduler"]
    assert {job["id"] for job in scheduler.jobs()} == {"backup:default", "drill:default"}
    assert all(job["next_run"] for job in scheduler.jobs())


def test_scheduled_runs_are_separate_processes_at_lower_cpu_priority(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child is `<python> -m sentinel ARGS --data-dir D --config C`, reniced to `backup.nice`.

    A stand-in interpreter records its arguments and, once the scheduler has reniced it (it looks
    until then, for at most a minute), its own niceness as the kernel reports it."""
    settings = load_settings(config(tmp_path, data_dir, "0 2 * * *", nice=7))
    seen = tmp_path / "seen"
    python = tmp_path / "python"
    wait = 'i=0; while [ "$(nice)" != 7 ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done'
    python.write_text(f'#!/bin/sh\n{wait}\necho "$(nice) $*" > {seen}\nexit 5\n')
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    status = spawn_sentinel(settings)(["backup", "run", "m"])
    niceness, *args = seen.read_text().split()
    assert status == 5
    assert int(niceness) == 7
    assert args[:5] == ["-m", "sentinel", "backup", "run", "m"]
    assert args[5:7] == ["--data-dir", str(data_dir)] and args[7] == "--config"
