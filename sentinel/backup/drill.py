"""`RestoreDrill`: prove a plan restores. Restore its latest snapshot into an isolated scratch
directory, verify every hash, run the drill checks, measure RTO and RPO against their targets,
write a report (JSON and Markdown) and record the outcome for /metrics.

RTO is the time from drill start to verified data (listing, download, decryption, writing, all
checks). RPO is the age of the newest recovered record (when a check can tell, e.g. the audit
store's newest record) or else of the snapshot itself.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from sentinel.backup.checks import CheckResult, DrillCheck, default_checks, load_check
from sentinel.backup.jobs import BackupContext
from sentinel.backup.progress import Progress
from sentinel.backup.restore import Restorer
from sentinel.backup.state import RunRecord


@dataclass
class DrillReport:
    plan: str
    started: float
    finished: float = 0.0
    snapshot: str | None = None
    snapshot_time: float | None = None
    target: str = ""
    scratch: str = ""
    host: str = field(default_factory=socket.gethostname)
    files: int = 0
    bytes: int = 0
    rto_seconds: float | None = None
    rto_target_seconds: float = 0.0
    rpo_seconds: float | None = None
    rpo_target_seconds: float = 0.0
    rpo_basis: str = ""
    checks: list[CheckResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    """Snapshots acknowledged as lost (`backup forget --lost`): reported, not failures."""

    @property
    def passed(self) -> bool:
        return (
            not self.failures
            and bool(self.checks)
            and all(c.passed for c in self.checks)
            and self.rto_seconds is not None
            and self.rto_seconds <= self.rto_target_seconds
            and self.rpo_seconds is not None
            and self.rpo_seconds <= self.rpo_target_seconds
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out

    def markdown(self) -> str:
        def when(t: float | None) -> str:
            return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"

        def verdict(ok: bool) -> str:
            return "met" if ok else "**MISSED**"

        rto_ok = self.rto_seconds is not None and self.rto_seconds <= self.rto_target_seconds
        rpo_ok = self.rpo_seconds is not None and self.rpo_seconds <= self.rpo_target_seconds
        lines = [
            f"# Restore drill: plan `{self.plan}` — {'PASSED' if self.passed else 'FAILED'}",
            "",
            "| | |",
            "|---|---|",
            f"| drill started | {when(self.started)} on `{self.host}` |",
            f"| snapshot restored | `{self.snapshot or '-'}` (taken {when(self.snapshot_time)}) |",
            f"| from | {self.target} |",
            f"| restored into | `{self.scratch}` (isolated scratch directory) |",
            f"| restored | {self.files} files, {self.bytes:,} bytes |",
            f"| RTO measured / target | {_secs(self.rto_seconds)} / {_secs(self.rto_target_seconds)} — "
            f"{verdict(rto_ok)} |",
            f"| RPO measured / target | {_secs(self.rpo_seconds)} / {_secs(self.rpo_target_seconds)} — "
            f"{verdict(rpo_ok)} ({self.rpo_basis}) |",
            "",
            "## Integrity checks",
            "",
        ]
        lines += [f"- [{'x' if c.passed else ' '}] **{c.name}**: {c.detail}" for c in self.checks]
        lines += ["", "## Failures", ""]
        lines += [f"- {f}" for f in self.failures] or ["none"]
        if self.acknowledged:
            lines += ["", "## Snapshots acknowledged lost", ""]
            lines += [f"- {a}" for a in self.acknowledged]
        lines += ["", "## Sign-off", "", "Reviewed by: ______________________  Date: ____________", ""]
        return "\n".join(lines)


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


class RestoreDrill:
    def __init__(
        self,
        context: BackupContext,
        plan: str,
        *,
        checks: Sequence[DrillCheck] | None = None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (epoch seconds) dates the drill and measures RPO; `timer` measures RTO."""
        self.context = context
        self.clock = clock
        self.timer = timer
        self.plan = plan
        self.settings = context.plan(plan).drill
        self.progress = progress or Progress()
        self.checks = list(checks) if checks is not None else default_checks()
        self.checks += [load_check(spec, plan, context.settings) for spec in self.settings.checks]

    def run(self) -> DrillReport:
        started = self.clock()
        began = self.timer()
        report = DrillReport(
            self.plan,
            started,
            rto_target_seconds=self.settings.rto_target,
            rpo_target_seconds=self.settings.rpo_target,
        )
        stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
        scratch = self.context.path(self.settings.scratch_dir) / f"{stamp}-{self.plan}-{secrets.token_hex(3)}"
        report.scratch = str(scratch)
        try:
            repo = self.context.repository(self.plan)
            report.target = repo.target.describe()
            snapshot = repo.resolve("latest", self.plan)
            # Evidence that went missing fails the drill even when the newest snapshot restores.
            catalog = repo.catalog(self.plan)
            report.failures.extend(catalog.problems())
            report.acknowledged = catalog.acknowledged()
            report.snapshot, report.snapshot_time = snapshot.id, snapshot.finished
            result = Restorer(repo, concurrency=self.context.backup.upload_concurrency, progress=self.progress).restore(
                snapshot, scratch
            )
            report.files, report.bytes = result.files, result.bytes
            for check in self.checks:
                self.progress.begin(f"check: {check.name}", None)
                try:
                    report.checks.append(check.run(scratch, snapshot))
                except Exception as exc:  # a broken check fails the drill, it does not crash it
                    report.checks.append(CheckResult(check.name, False, f"check crashed: {exc}"))
                self.progress.end()
            report.rto_seconds = self.timer() - began
            newest = [c.newest_record for c in report.checks if c.newest_record is not None]
            if newest:
                report.rpo_seconds, report.rpo_basis = self.clock() - max(newest), "newest recovered record"
            else:
                report.rpo_seconds, report.rpo_basis = self.clock() - snapshot.finished, "snapshot time"
        except Exception as exc:
            report.failures.append(str(exc) or type(exc).__name__)
        finally:
            if not self.settings.keep_scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        report.finished = self.clock()
        self._write(report, stamp)
        return report

    def _write(self, report: DrillReport, stamp: str) -> None:
        directory = self.context.path(self.settings.report_dir)
        directory.mkdir(parents=True, exist_ok=True)
        base = directory / f"{stamp}-{self.plan}"
        Path(f"{base}.json").write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
        Path(f"{base}.md").write_text(report.markdown())
        self.report_path = Path(f"{base}.md")
        with contextlib.suppress(Exception):
            self.context.run_log().record(
                RunRecord(
                    "drill",
                    self.plan,
                    report.started,
                    report.finished,
                    "success" if report.passed else "failure",
                    snapshot=report.snapshot,
                    error="; ".join(report.failures) or None,
                    rto=report.rto_seconds,
                    rpo=report.rpo_seconds,
                    passed=report.passed,
                    report=str(Path(f"{base}.json")),
                )
            )
