"""Drill checks: what a restore drill verifies on the restored data, one small class each.

The seam for more: anything with a `name` and `run(restored, snapshot) -> CheckResult` is a
`DrillCheck`. Plans add their own with `drill.checks: ["package.module:factory"]`, where
`factory(plan_name, settings)` returns a check — this is how the audit trail's checks (decrypt a
sample of records with the audit keys, re-verify the hash chain) plug in without this package
knowing about audit internals.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from sentinel.backup.snapshot import Snapshot
from sentinel.backup.sources.postgres import DUMP_FOOTER
from sentinel.backup.sources.sqlite import newest_record_time, parse_time


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    newest_record: float | None = None
    """The newest record time this check found in the restored data (epoch seconds), for RPO."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """What the check relied on, for the drill report (e.g. the audit check's trusted keys)."""


@runtime_checkable
class DrillCheck(Protocol):
    name: str

    def run(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        """Check the snapshot restored under `restored/<source>/...`; never raise for a failed check."""
        ...


class FileHashesCheck:
    """Re-reads every restored file and compares its size and SHA-256 with the manifest."""

    name = "file hashes"

    def run(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        bad = []
        count = 0
        for entry in snapshot.files:
            if entry.type != "file":
                continue
            path = restored / entry.source / entry.path
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
            except OSError as exc:
                bad.append(f"{entry.source}/{entry.path}: {exc.strerror}")
                continue
            if digest.hexdigest() != entry.sha256 or path.stat().st_size != entry.size:
                bad.append(f"{entry.source}/{entry.path}: SHA-256 mismatch")
            count += 1
        if bad:
            return CheckResult(self.name, False, f"{len(bad)} of {count} files differ: " + "; ".join(bad[:5]))
        return CheckResult(self.name, True, f"{count} files match their SHA-256")


class SqliteIntegrityCheck:
    """`PRAGMA integrity_check` on each restored SQLite database, and its newest record (for RPO)."""

    name = "sqlite integrity"

    def run(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        details, passed, newest = [], True, None
        for source in snapshot.sources:
            if source.kind != "sqlite" or source.meta.get("missing"):
                continue
            path = restored / source.name / str(source.meta["database"])
            try:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                    result = conn.execute("PRAGMA integrity_check").fetchone()[0]
                sql = source.meta.get("newest_record_sql")
                found = newest_record_time(path, sql) if sql else None
            except (sqlite3.Error, ValueError) as exc:
                passed = False
                details.append(f"{source.name}: {exc}")
                continue
            if result != "ok":
                passed = False
            details.append(f"{source.name}: integrity_check={result}")
            if found is not None:
                newest = found if newest is None else max(newest, found)
        if not details:
            return CheckResult(self.name, True, "no SQLite sources in this snapshot")
        return CheckResult(self.name, passed, "; ".join(details), newest)


class PostgresDumpCheck:
    """Each restored dump is complete: pg_dump writes its closing comment only after the last object."""

    name = "postgres dump complete"

    def run(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        details, passed = [], True
        for source in snapshot.sources:
            if source.kind != "postgres":
                continue
            path = restored / source.name / "dump.sql"
            try:
                with open(path, "rb") as handle:
                    handle.seek(max(0, path.stat().st_size - 4096))
                    tail = handle.read()
            except OSError as exc:
                passed = False
                details.append(f"{source.name}: {exc.strerror}")
                continue
            complete = DUMP_FOOTER in tail
            passed = passed and complete
            details.append(f"{source.name}: {'complete' if complete else 'TRUNCATED (no closing comment)'}")
        if not details:
            return CheckResult(self.name, True, "no PostgreSQL sources in this snapshot")
        return CheckResult(self.name, passed, "; ".join(details))


class ElasticsearchExportCheck:
    """Each restored index export parses line by line and holds as many documents as were exported."""

    name = "elasticsearch export"

    def run(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        details, passed, newest = [], True, None
        for source in snapshot.sources:
            if source.kind != "elasticsearch" or source.meta.get("missing"):
                continue
            field = source.meta.get("timestamp_field")
            for index, expected in dict(source.meta.get("indices", {})).items():
                path = restored / source.name / index / "documents.ndjson"
                count = 0
                try:
                    with open(path, "rb") as handle:
                        for line in handle:
                            doc: dict[str, Any] = orjson.loads(line)
                            count += 1
                            if field and (stamp := parse_time(doc["_source"].get(field))) is not None:
                                newest = stamp if newest is None else max(newest, stamp)
                except (OSError, orjson.JSONDecodeError, KeyError) as exc:
                    passed = False
                    details.append(f"{index}: {exc}")
                    continue
                ok = count == expected
                passed = passed and ok
                details.append(f"{index}: {count}/{expected} documents")
        if not details:
            return CheckResult(self.name, True, "no Elasticsearch sources in this snapshot")
        return CheckResult(self.name, passed, "; ".join(details), newest)


def default_checks() -> list[DrillCheck]:
    return [FileHashesCheck(), SqliteIntegrityCheck(), PostgresDumpCheck(), ElasticsearchExportCheck()]


def load_check(spec: str, plan: str, settings: Any) -> DrillCheck:
    """Import `module:factory` and build the check: `factory(plan, settings)`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"drill check {spec!r} must look like 'package.module:factory'")
    factory: Callable[[str, Any], DrillCheck] = getattr(importlib.import_module(module_name), attr)
    check = factory(plan, settings)
    if not isinstance(check, DrillCheck):
        raise TypeError(f"drill check {spec!r} did not return a DrillCheck (needs .name and .run)")
    return check
