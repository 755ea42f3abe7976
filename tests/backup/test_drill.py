"""Restore drills (RTO, RPO, checks, reports) and the metrics every run leaves behind."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import requests
from prometheus_client import CollectorRegistry

from sentinel.backup.checks import CheckResult
from sentinel.backup.drill import RestoreDrill
from sentinel.backup.jobs import BackupContext, run_backup
from sentinel.backup.metrics import BackupCollector
from sentinel.backup.progress import Progress
from sentinel.backup.repository import chunk_key
from sentinel.backup.snapshot import Snapshot
from sentinel.backup.state import RunLog, RunRecord
from tests.backup.conftest import FakeClock, MakeContext, write_model
from tests.conftest import Running
from tests.support.upstream import ScriptedUpstream

NEWEST = "SELECT max(ts) FROM records"


def audit_store(data_dir: Path, newest: float) -> None:
    db = data_dir / "audit" / "store.db"
    db.parent.mkdir(exist_ok=True)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, ts TEXT)")
        conn.executemany(
            "INSERT INTO records (ts) VALUES (?)",
            [(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest - i)),) for i in range(50)],
        )
        conn.commit()


def audit_plan(tmp_path: Path, **drill: Any) -> dict[str, Any]:
    write_model(tmp_path / "models", {"w.bin": 300_000})
    return {
        "audit": {
            "sources": [
                {"kind": "sqlite", "name": "audit", "newest_record_sql": NEWEST},
                {"kind": "keys"},
                {"kind": "path", "name": "models", "path": str(tmp_path / "models")},
            ],
            "drill": drill,
        }
    }


class RestoreTakes(Progress):
    """Moves the fake clock by `seconds` while the drill's restore runs: a restore of known duration."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def begin(self, description: str, total: int | None) -> None:
        if description.startswith("restoring "):
            self.clock.advance(self.seconds)


def samples(context: BackupContext) -> Callable[[str, str], float | None]:
    registry = CollectorRegistry()
    registry.register(BackupCollector(context.run_log(), context.backup.plans))
    return lambda name, plan: registry.get_sample_value(name, {"plan": plan})


def test_drill_restores_verifies_measures_and_reports(
    make_context: MakeContext, data_dir: Path, tmp_path: Path
) -> None:
    clock = FakeClock()
    audit_store(data_dir, newest=clock() - 3600)
    context = make_context(plans=audit_plan(tmp_path, rto_target=120, rpo_target=7200))
    backup = run_backup(context, "audit")
    assert backup.outcome == "success" and backup.snapshot is not None

    # The drill's clocks are the fake one: its restore "takes" 42 s, whatever the machine's load.
    drill = RestoreDrill(context, "audit", clock=clock, timer=clock, progress=RestoreTakes(clock, 42.0))
    report = drill.run()
    assert report.passed, report.to_dict()
    assert report.snapshot == backup.snapshot.id and report.files == 3
    assert {c.name for c in report.checks} >= {"file hashes", "sqlite integrity"}
    assert report.rpo_basis == "newest recovered record"
    assert report.rpo_seconds == 3600 + 42  # the newest audit record was an hour old when the drill began
    assert report.rto_seconds == 42
    assert (report.started, report.finished) == (clock() - 42, clock())
    assert not Path(report.scratch).exists()  # the scratch restore is cleaned up
    saved = orjson.loads(drill.report_path.with_suffix(".json").read_bytes())
    assert saved["passed"] is True and saved["snapshot"] == backup.snapshot.id
    text = drill.report_path.read_text()
    for needle in ("PASSED", "RTO measured / target", "RPO measured / target", "sqlite integrity", "Sign-off"):
        assert needle in text

    value = samples(context)
    assert value("sentinel_drill_last_passed", "audit") == 1.0
    assert value("sentinel_drill_last_rpo_seconds", "audit") == report.rpo_seconds
    assert value("sentinel_drill_last_rto_seconds", "audit") == report.rto_seconds
    assert value("sentinel_drill_rto_target_seconds", "audit") == 120
    assert value("sentinel_drill_rpo_target_seconds", "audit") == 7200
    assert value("sentinel_drill_last_success_timestamp_seconds", "audit") == report.finished
    assert value("sentinel_drill_last_run_timestamp_seconds", "audit") == report.finished


def test_drill_fails_on_a_missed_rpo_and_on_a_corrupt_chunk(
    make_context: MakeContext, data_dir: Path, tmp_path: Path
) -> None:
    clock = FakeClock()
    audit_store(data_dir, newest=clock() - 3 * 86400)  # nothing recorded for three days
    context = make_context(plans=audit_plan(tmp_path, rpo_target=86400))
    backup = run_backup(context, "audit")
    assert backup.snapshot is not None
    report = RestoreDrill(context, "audit", clock=clock).run()
    assert report.rpo_seconds == 3 * 86400
    assert not report.passed and all(c.passed for c in report.checks)
    assert "**MISSED**" in report.markdown()
    assert samples(context)("sentinel_drill_last_passed", "audit") == 0.0

    chunk = next(f for f in backup.snapshot.files if f.path == "w.bin").chunks[0].id
    path = data_dir / "backups" / chunk_key(chunk)
    sealed = path.read_bytes()
    path.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))  # always a change (a last byte 0 was not)
    report = RestoreDrill(context, "audit", clock=clock).run()
    assert not report.passed and chunk in report.failures[0] and "models/w.bin" in report.failures[0]
    last = context.run_log().latest("drill")["audit"]
    assert last.outcome == "failure" and last.passed is False


class AlwaysFails:
    """Stands in for a check plugged in from elsewhere (the audit chain check plugs in the same way)."""

    name = "plugged-in check"

    def __init__(self, plan: str) -> None:
        self.plan = plan

    def run(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        seen = sorted(p.name for p in restored.iterdir())
        return CheckResult(self.name, False, f"plan {self.plan} saw {seen}")


def make_failing_check(plan: str, settings: Any) -> AlwaysFails:
    return AlwaysFails(plan)


def test_checks_plug_in_from_settings(make_context: MakeContext, data_dir: Path, tmp_path: Path) -> None:
    audit_store(data_dir, newest=time.time())
    context = make_context(plans=audit_plan(tmp_path, checks=["tests.backup.test_drill:make_failing_check"]))
    run_backup(context, "audit")
    report = RestoreDrill(context, "audit").run()
    plugged = report.checks[-1]
    assert plugged.name == "plugged-in check" and plugged.detail == "plan audit saw ['audit', 'keys', 'models']"
    assert not report.passed


def test_backup_metrics_have_the_agreed_names(make_context: MakeContext, tmp_path: Path) -> None:
    write_model(tmp_path / "m", {"a.bin": 100_000})
    context = make_context(plans={"m": {"sources": [{"kind": "path", "path": str(tmp_path / "m")}]}})
    value = samples(context)
    registry = CollectorRegistry()
    registry.register(BackupCollector(context.run_log(), context.backup.plans))
    assert registry.get_sample_value("sentinel_backup_runs_total", {"plan": "m", "outcome": "success"}) == 0
    ok = run_backup(context, "m")
    (tmp_path / "m").rename(tmp_path / "gone")  # the next run fails: its source has disappeared
    assert run_backup(context, "m").outcome == "failure"
    assert ok.snapshot is not None
    assert registry.get_sample_value("sentinel_backup_runs_total", {"plan": "m", "outcome": "success"}) == 1
    assert registry.get_sample_value("sentinel_backup_runs_total", {"plan": "m", "outcome": "failure"}) == 1
    assert value("sentinel_backup_last_success_timestamp_seconds", "m") == ok.finished
    assert value("sentinel_backup_last_size_bytes", "m") == 100_000
    assert value("sentinel_backup_last_uploaded_bytes", "m") == ok.snapshot.uploaded_bytes
    last = context.run_log().latest("backup")["m"]
    assert value("sentinel_backup_last_run_timestamp_seconds", "m") == last.finished
    assert value("sentinel_backup_last_duration_seconds", "m") == last.duration


def test_sentinel_admin_metrics_expose_backup_outcomes(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    RunLog(tmp_path / "data" / "backup" / "state.db").record(
        RunRecord("backup", "default", 1000.0, 1060.0, "success", size=5, uploaded=7, snapshot="s")
    )
    running = start_sentinel(upstream.url)
    text = requests.get(running.admin_url + "/metrics", timeout=5).text
    assert 'sentinel_backup_last_success_timestamp_seconds{plan="default"} 1060.0' in text
    assert 'sentinel_backup_last_duration_seconds{plan="default"} 60.0' in text
    assert 'sentinel_backup_runs_total{outcome="success",plan="default"} 1.0' in text
    assert 'sentinel_drill_rto_target_seconds{plan="default"} 3600.0' in text
