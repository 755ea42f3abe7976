"""Chain verification for reports: pages verified in worker processes find the same as one pass in this
process or as `sentinel audit verify`, tampering included, also where it sits on a page boundary; and a
restore drill, a report and `verify` name the same findings (one verifier behind all three)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sentinel.audit.service import stored_public_keys
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.audit.verify import verify
from sentinel.report.integrity import IntegrityResult, verify_period
from sentinel.report.issue import public_keys
from sentinel.report.model import Period
from tests.audit.support import running_trail
from tests.report.conftest import Dataset


def _summary(result: IntegrityResult) -> dict[str, Any]:
    census = result.census
    return {
        "records": result.records_checked,
        "reports": [
            (r.instance, r.first_seq, r.last_seq, r.records_checked, r.checkpoints_checked, r.last_checkpoint_seq)
            for r in result.instances
        ],
        "findings": sorted((f.instance, f.kind, f.seq, f.seq_to, f.doc_id) for f in result.findings),
        "census": (
            dict(census.records),
            dict(census.encrypted_by_kid),
            census.kid_first_seen,
            census.kid_last_seen,
            census.plaintext,
            sorted(str(e) for e in census.exceptions),
            census.phi_records,
            dict(census.phi),
            dict(census.policy_actions),
        ),
    }


def test_windows_in_worker_processes_give_the_same_result(planted: Dataset) -> None:
    async def verify(window: int, processes: int) -> dict[str, Any]:
        store = EmbeddedStore(planted.settings.resolve_path(planted.settings.audit.store_path), read_only=True)
        await store.open()
        try:
            lookup = public_keys(await store.keys())
            done: list[int] = []
            result = await verify_period(
                store, lookup, planted.period(), window=window, processes=processes, progress=done.append
            )
            assert sum(done) == result.records_checked
            return _summary(result)
        finally:
            await store.close()

    whole = asyncio.run(verify(1_000_000, 1))
    assert whole["records"] > 50
    assert (planted.planted.tampered, "modified") in {(f[4], f[1]) for f in whole["findings"]}
    assert asyncio.run(verify(7, 1)) == whole
    assert asyncio.run(verify(7, 2)) == whole


ALL_TIME = Period(0.0, 253402300799.0)  # up to 9999-12-31: every record these trails wrote
Outcome = tuple[list[tuple[str, int]], list[tuple[str, int]], int]


def _boundary_case(tmp_path: Path, tamper: str, processes: int) -> Outcome:
    """40 records, checkpoints every 7, record 10 (the last of the first 10-record window) tampered with."""

    async def run() -> Outcome:
        async with running_trail(tmp_path, checkpoint_every=7) as t:
            for n in range(1, 41):
                await t.write(1, start=n)
            await t.ship()
            keys = {k.kid: t.keyring.public_key(k.kid) for k in t.keyring.all_keys() if k.purpose == "signing"}
            if tamper == "delete":
                t.sql("DELETE FROM records WHERE seq = 10")
            else:
                doc = t.body(10)
                doc["recorded_at"] += 0.001
                t.replace(10, doc, rehash=True)
            period = ALL_TIME
            windowed = await verify_period(t.store, keys.get, period, window=10, processes=processes)
            whole = await t.verify()
            return (
                sorted((f.kind, f.seq) for f in windowed.findings),
                sorted((f.kind, f.seq) for f in whole.findings),
                windowed.records_checked,
            )

    return asyncio.run(run())


@pytest.mark.parametrize("processes", [1, 2])
def test_a_record_deleted_at_a_window_boundary_is_found(tmp_path: Path, processes: int) -> None:
    windowed, whole, checked = _boundary_case(tmp_path, "delete", processes)
    assert windowed == whole == [("deleted", 10)]
    assert checked == 39


@pytest.mark.parametrize("processes", [1, 2])
def test_a_record_rewritten_at_a_window_boundary_is_found(tmp_path: Path, processes: int) -> None:
    windowed, whole, checked = _boundary_case(tmp_path, "rehash", processes)
    assert windowed == whole == [("inserted", 11)]
    assert checked == 40


def test_without_a_valid_checkpoint_every_window_counts_as_unsealed(tmp_path: Path) -> None:
    async def run() -> list[int]:
        async with running_trail(tmp_path) as t:
            await t.write(30)
            await t.ship()
            period = ALL_TIME
            results = [await verify_period(t.store, lambda kid: None, period, window=w) for w in (1000, 10)]
            return [r.instances[0].unsealed for r in results] + [r.records_checked for r in results]

    assert asyncio.run(run()) == [30, 30, 30, 30]


def test_a_drill_a_report_and_audit_verify_name_the_same_findings(
    planted: Dataset, fresh_copy: Callable[[Dataset], Dataset]
) -> None:
    """One verifier behind all three: after the planted tamper and a deleted record, a restore drill of
    the tampered store, the report and `verify` each name the same (kind, instance, seq) findings."""
    from sentinel.backup.drill import RestoreDrill
    from sentinel.backup.jobs import BackupContext, run_backup

    dataset = fresh_copy(planted)
    path = dataset.settings.resolve_path(dataset.settings.audit.store_path)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM records WHERE instance = 'report-test' AND seq = 30")
    db.commit()
    db.close()

    async def verified() -> set[tuple[str, str, int | None]]:
        store = EmbeddedStore(path, read_only=True)
        await store.open()
        try:
            report = await verify(store, (await stored_public_keys(store)).get)
            return {(f.kind, f.instance, f.seq) for f in report.findings}
        finally:
            await store.close()

    expected = asyncio.run(verified())
    assert {(kind, seq) for kind, _, seq in expected} == {("deleted", 30), ("modified", expected_modified(planted))}

    with dataset.at_dataset_time():
        backups = BackupContext(dataset.settings)
        run_backup(backups, "audit")
        drill = RestoreDrill(backups, "audit").run()
    (check,) = [c for c in drill.checks if c.name == "audit trail"]
    assert not check.passed, check.detail
    assert {f"{kind} at {instance}:{seq}" for kind, instance, seq in expected} <= set(
        check.detail.rsplit(" (", 1)[1].rstrip(")").split("; ")
    )

    report = Dataset(dataset.settings, dataset.planted, dataset.config, dataset.now).report()
    named = {(f["kind"], i["instance"], f["seq"]) for i in report["integrity"]["instances"] for f in i["findings"]}
    assert named == expected


def expected_modified(dataset: Dataset) -> int:
    return int(str(dataset.planted.tampered).rsplit(":", 1)[1])
