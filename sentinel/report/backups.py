"""Contingency-plan evidence (164.308(a)(7)): backup and drill runs from the run log, the latest drill's
report file, and the checks an auditor makes of them — a backup per plan, no unexplained failures,
a drill that restored within its RTO and RPO targets."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from sentinel.backup.settings import BackupSettings
from sentinel.backup.state import RunLog, RunRecord
from sentinel.monitoring.thresholds import BACKUP_AGE, DRILL_AGE
from sentinel.periods import iso
from sentinel.report.model import Finding, Period


def _runs_in(path: Path, period: Period) -> list[RunRecord]:
    """Backup and drill runs that finished in the period (read-only; an absent log is no runs)."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        try:
            rows = db.execute(
                "SELECT kind, plan, started, finished, outcome, size, uploaded, snapshot, error, rto, rpo, passed, "
                "report FROM runs WHERE kind IN ('backup', 'drill') AND finished >= ? AND finished < ? ORDER BY id",
                (period.since, period.until),
            ).fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []
    return [
        RunRecord(
            kind=row[0],
            plan=row[1],
            started=row[2],
            finished=row[3],
            outcome=row[4],
            size=row[5],
            uploaded=row[6],
            snapshot=row[7],
            error=row[8],
            rto=row[9],
            rpo=row[10],
            passed=None if row[11] is None else bool(row[11]),
            report=row[12],
        )
        for row in rows
    ]


def _drill_file(record: RunRecord) -> dict[str, Any] | None:
    if not record.report:
        return None
    try:
        loaded: dict[str, Any] = orjson.loads(Path(record.report).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return loaded


def _latest(records: list[RunRecord], plan: str, kind: str, outcome: str | None = None) -> RunRecord | None:
    matching = [r for r in records if r.plan == plan and r.kind == kind and (outcome is None or r.outcome == outcome)]
    return matching[-1] if matching else None


def gather_backups(backup: BackupSettings, state_file: Path, period: Period) -> tuple[dict[str, Any], list[Finding]]:
    in_period = _runs_in(state_file, period)
    log = RunLog(state_file)
    ever_success = log.latest("backup", outcome="success")
    ever_drill = log.latest("drill")
    plans: list[dict[str, Any]] = []
    findings: list[Finding] = []
    for name in sorted(backup.plans):
        plan = backup.plans[name]
        last_ok = _latest(in_period, name, "backup", "success") or ever_success.get(name)
        if last_ok is not None and last_ok.finished >= period.until:
            last_ok = None  # after the period: not evidence for it
        failures = [r for r in in_period if r.plan == name and r.kind == "backup" and r.outcome == "failure"]
        drill = _latest(in_period, name, "drill") or ever_drill.get(name)
        if drill is not None and drill.finished >= period.until:
            drill = None
        drill_report = _drill_file(drill) if drill is not None else None
        entry: dict[str, Any] = {
            "plan": name,
            "schedule": plan.schedule,
            "target": plan.target,
            "sources": [s.name or s.kind for s in plan.sources],
            "backups_in_period": sum(1 for r in in_period if r.plan == name and r.kind == "backup"),
            "last_success": None
            if last_ok is None
            else {"finished": iso(last_ok.finished), "snapshot": last_ok.snapshot, "bytes": last_ok.size},
            "failures": [{"finished": iso(r.finished), "error": r.error or "unknown"} for r in failures],
            "drill": None,
        }
        if drill is not None:
            entry["drill"] = {
                "finished": iso(drill.finished),
                "passed": bool(drill.passed),
                "snapshot": drill.snapshot,
                "rto_seconds": drill.rto,
                "rto_target_seconds": (drill_report or {}).get("rto_target_seconds", plan.drill.rto_target),
                "rpo_seconds": drill.rpo,
                "rpo_target_seconds": (drill_report or {}).get("rpo_target_seconds", plan.drill.rpo_target),
                "checks": [
                    {"name": str(c.get("name")), "passed": bool(c.get("passed")), "detail": str(c.get("detail", ""))}
                    for c in (drill_report or {}).get("checks", [])
                ],
                "failures": [str(f) for f in (drill_report or {}).get("failures", [])],
                "report_file": Path(drill.report).name if drill.report else None,
            }
        plans.append(entry)
        findings += _plan_findings(entry, last_ok, failures, drill, period)
    return {"plans": plans}, findings


def _plan_findings(
    entry: dict[str, Any],
    last_ok: RunRecord | None,
    failures: list[RunRecord],
    drill: RunRecord | None,
    period: Period,
) -> list[Finding]:
    name = entry["plan"]
    findings: list[Finding] = []
    if last_ok is None:
        findings.append(
            Finding("backups", "backup.none", "high", f"No successful backup of plan {name}", "no backup succeeded")
        )
    elif period.until - last_ok.finished > BACKUP_AGE.critical:
        findings.append(
            Finding(
                "backups",
                "backup.stale",
                "high",
                f"Backups of plan {name} stopped",
                f"last success {iso(last_ok.finished)}, more than {BACKUP_AGE.critical / 3600:g} h before the end "
                "of the period (the BackupTooOld alert's level)",
            )
        )
    for failure in failures:
        findings.append(
            Finding(
                "backups",
                "backup.failed",
                "medium",
                f"Backup of plan {name} failed",
                f"{iso(failure.finished)}: {failure.error or 'unknown error'}",
                {"plan": name, "finished": iso(failure.finished)},
            )
        )
    if drill is None:
        findings.append(
            Finding("backups", "drill.none", "medium", f"No restore drill of plan {name}", "no drill has run")
        )
        return findings
    summary = entry["drill"]
    if period.until - drill.finished > DRILL_AGE.critical:
        findings.append(
            Finding(
                "backups",
                "drill.stale",
                "medium",
                f"Restore drills of plan {name} stopped",
                f"last drill {iso(drill.finished)}, more than {DRILL_AGE.critical / 86400:g} days before the end "
                "of the period",
            )
        )
    rto, rto_target = summary["rto_seconds"], summary["rto_target_seconds"]
    rpo, rpo_target = summary["rpo_seconds"], summary["rpo_target_seconds"]
    if rto is not None and rto > rto_target:  # not measured: the drill failed, reported below
        findings.append(
            Finding(
                "backups",
                "drill.rto_missed",
                "high",
                f"Restore drill of plan {name} missed its RTO",
                f"drill {summary['finished']}: RTO {_secs(rto)} against a target of {_secs(rto_target)}",
                {"plan": name, "rto_seconds": rto, "rto_target_seconds": rto_target},
            )
        )
    if rpo is not None and rpo > rpo_target:
        findings.append(
            Finding(
                "backups",
                "drill.rpo_missed",
                "high",
                f"Restore drill of plan {name} missed its RPO",
                f"drill {summary['finished']}: RPO {_secs(rpo)} against a target of {_secs(rpo_target)}",
                {"plan": name, "rpo_seconds": rpo, "rpo_target_seconds": rpo_target},
            )
        )
    failed_checks = [c for c in summary["checks"] if not c["passed"]]
    if failed_checks or summary["failures"] or rto is None or rpo is None:
        findings.append(
            Finding(
                "backups",
                "drill.failed",
                "high",
                f"Restore drill of plan {name} failed",
                "; ".join([f"{c['name']}: {c['detail']}" for c in failed_checks] + summary["failures"])
                or "the drill did not complete",
                {"plan": name},
            )
        )
    return findings


def _secs(value: float | None) -> str:
    if value is None:
        return "not measured"
    return f"{value:.3g} s" if value < 120 else f"{value / 60:.1f} min"
