"""The verification schedule: cron times from the settings, in `serve` or in `sentinel scheduler`, a
check missed while no scheduler was up caught up on start, and each check a child `sentinel` process."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from apscheduler.triggers.cron import CronTrigger
from prometheus_client import CollectorRegistry

from sentinel.audit.schedule import VerifySchedule, spawn_check
from sentinel.audit.watch import CheckRun
from sentinel.cli.scheduler import register_metrics, schedulers
from sentinel.config import ConfigError, Settings, load_settings
from tests.conftest import Running, wait_until
from tests.support.upstream import ScriptedUpstream

MONDAY = datetime(2025, 3, 10, 2, 0, tzinfo=UTC).timestamp()
MINUTE = 60.0


def settings(tmp_path: Path, **audit: Any) -> Settings:
    return load_settings(None, data_dir=tmp_path / "data", audit=audit, backup={"timezone": "UTC"})


def triggers(schedule: VerifySchedule) -> dict[str, str]:
    return {job["id"]: job["trigger"] for job in schedule.jobs()}


def cron(expression: str) -> str:
    return str(CronTrigger.from_crontab(expression, timezone=UTC))


def never(args: Sequence[str]) -> int:
    raise AssertionError(f"no check should run: {args}")


def test_each_check_runs_at_its_cron_time(tmp_path: Path) -> None:
    schedule = VerifySchedule(
        settings(tmp_path, verify_schedule="5 * * * *", verify_full_schedule="0 1 * * sat"), spawn=never
    )
    assert triggers(schedule) == {"verify:incremental": cron("5 * * * *"), "verify:full": cron("0 1 * * sat")}
    defaults = VerifySchedule(settings(tmp_path), spawn=never)
    assert triggers(defaults) == {"verify:incremental": cron("7 * * * *"), "verify:full": cron("40 3 * * sun")}
    assert triggers(VerifySchedule(settings(tmp_path, verify_full_schedule=None), spawn=never)) == {
        "verify:incremental": cron("7 * * * *")
    }


def test_a_bad_cron_time_names_its_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"audit.verify_full_schedule .*not a valid crontab expression"):
        settings(tmp_path, verify_full_schedule="61 * * * *")


def test_a_check_missed_while_no_scheduler_was_up_is_due(tmp_path: Path) -> None:
    schedule = VerifySchedule(settings(tmp_path), spawn=never)  # hourly at :07, Sundays at 03:40
    assert schedule.missed(MONDAY + 10 * MINUTE) == []  # never scheduled here before: nothing was missed
    state = schedule.state.load()
    state.scheduled_since = MONDAY
    schedule.state.save(state)
    assert schedule.missed(MONDAY + 6 * MINUTE) == []
    assert schedule.missed(MONDAY + 8 * MINUTE) == ["incremental"]
    state.history("incremental").last = CheckRun(MONDAY + 7 * MINUTE, MONDAY + 7.5 * MINUTE, "ok", 10)
    schedule.state.save(state)
    assert schedule.missed(MONDAY + 8 * MINUTE) == []
    sunday = datetime(2025, 3, 16, 3, 41, tzinfo=UTC).timestamp()
    assert schedule.missed(sunday) == ["incremental", "full"]


def test_start_runs_missed_checks_each_in_a_child_one_after_the_other(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def spawn(args: Sequence[str]) -> int:
        calls.append(list(args))
        return 0

    clock = MONDAY + 8 * 24 * 60 * MINUTE  # over a week later: both checks were missed
    schedule = VerifySchedule(settings(tmp_path), spawn=spawn, clock=lambda: clock)
    state = schedule.state.load()
    state.scheduled_since = MONDAY
    schedule.state.save(state)
    schedule.start()
    try:
        with schedule.finished:
            assert schedule.finished.wait_for(lambda: len(schedule.completed) >= 2, timeout=60)
    finally:
        schedule.shutdown()
    expected = [["audit", "verify", "--scheduled", "incremental"], ["audit", "verify", "--scheduled", "full"]]
    assert sorted(calls) == sorted(expected)
    assert schedule.state.load().scheduled_since == MONDAY  # kept from the first start


def test_the_first_start_marks_when_checks_were_first_scheduled(tmp_path: Path) -> None:
    schedule = VerifySchedule(settings(tmp_path), spawn=never, clock=lambda: MONDAY)
    schedule.start()
    schedule.shutdown()
    assert schedule.state.load().scheduled_since == MONDAY


def test_a_check_is_a_sentinel_process_at_lower_cpu_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child is `<python> -m sentinel audit verify --scheduled CHECK --data-dir D --config C` at niceness 10.

    A stand-in interpreter records its arguments and, once reniced (it looks until then, for at most
    a minute), its own niceness as the kernel reports it."""
    config = tmp_path / "sentinel.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    seen = tmp_path / "seen"
    python = tmp_path / "python"
    wait = 'i=0; while [ "$(nice)" != 10 ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done'
    python.write_text(f'#!/bin/sh\n{wait}\necho "$(nice) $*" > {seen}\nexit 1\n')
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    status = spawn_check(load_settings(config))(["audit", "verify", "--scheduled", "full"])
    niceness, *args = seen.read_text().split()
    assert (status, int(niceness)) == (1, 10)
    assert args == [
        "-m",
        "sentinel",
        "audit",
        "verify",
        "--scheduled",
        "full",
        "--data-dir",
        str(tmp_path / "data"),
        "--config",
        str(config),
    ]


def test_stopping_the_schedule_stops_a_running_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A check stopped halfway records nothing; serve's shutdown need not wait hours for a full check."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nexec sleep 600\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    schedule = VerifySchedule(settings(tmp_path, verify_schedule=None), clock=lambda: MONDAY + 8 * 24 * 60 * MINUTE)
    state = schedule.state.load()
    state.scheduled_since = MONDAY
    schedule.state.save(state)
    schedule.start()
    try:
        wait_until(lambda: bool(schedule.running))
    finally:
        schedule.shutdown(wait=True)
    assert schedule.completed == [("full", -signal.SIGTERM)]
    assert not schedule.running


def test_serve_runs_the_schedule_and_shows_its_metrics(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    running = start_sentinel(
        upstream.url,
        audit={"verify_schedule": "*/15 * * * *", "verify_full_schedule": "0 1 * * sat"},
        backup={"timezone": "UTC"},
    )
    schedule = running.sentinel.extras["verify_schedule"]
    assert triggers(schedule) == {"verify:incremental": cron("*/15 * * * *"), "verify:full": cron("0 1 * * sat")}
    assert all(job["next_run"] for job in schedule.jobs())
    assert running.metric("sentinel_audit_verify_interval_seconds", check="incremental") == 15 * MINUTE
    assert running.metric("sentinel_audit_verify_interval_seconds", check="full") == 7 * 24 * 60 * MINUTE
    began = schedule.state.load().scheduled_since
    assert running.metric("sentinel_audit_verify_last_success_timestamp_seconds", check="full") == began


def test_serve_leaves_the_schedule_to_the_scheduler_when_told(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    running = start_sentinel(upstream.url, audit={"verify_in_serve": False})
    assert "verify_schedule" not in running.sentinel.extras
    assert running.metric("sentinel_audit_verify_interval_seconds", check="incremental") == 60 * MINUTE

    elsewhere = settings(tmp_path, verify_in_serve=False, verify_schedule="30 * * * *")
    runners = schedulers(elsewhere)
    (verification,) = [r for r in runners if isinstance(r, VerifySchedule)]
    assert triggers(verification)["verify:incremental"] == cron("30 * * * *")
    assert not any(isinstance(r, VerifySchedule) for r in schedulers(settings(tmp_path)))
    assert not any(
        isinstance(r, VerifySchedule) for r in schedulers(settings(tmp_path, mode="off", verify_in_serve=False))
    )

    registry = CollectorRegistry()
    register_metrics(elsewhere, registry)
    assert registry.get_sample_value("sentinel_audit_verify_interval_seconds", {"check": "incremental"}) == 3600
