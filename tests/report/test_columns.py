"""Edited search columns (issue #13): an attacker with the database rewrites the embedded store's
metadata columns and leaves every signed body alone. Verification names each edited record and column;
the report's numbers, counted from the verified bodies, do not move; search does not return a record
for a value it does not hold."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from sentinel.audit.service import stored_public_keys
from sentinel.audit.store import SearchQuery
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.audit.verify import verify
from sentinel.config import load_settings
from tests.report.conftest import Dataset

YEAR = 365 * 86400.0


def copy_of(dataset: Dataset, target: Path) -> Dataset:
    shutil.copytree(dataset.settings.data_dir, target)
    config = target / "sentinel.yaml"
    config.write_text(dataset.config.read_text().replace(str(dataset.settings.data_dir), str(target)))
    return Dataset(load_settings(config), dataset.planted, config, dataset.now)


def edit_columns(path: Path) -> dict[str, set[str]]:
    """The issue's column edits; returns the doc ids edited and the columns each should be named for."""
    db = sqlite3.connect(path)
    edited: dict[str, set[str]] = {}
    ok = [r[0] for r in db.execute("SELECT doc_id FROM records WHERE kind = 'interaction' AND outcome = 'ok' LIMIT 10")]
    marks = ", ".join("?" * len(ok))
    db.execute(
        f"UPDATE records SET status = 500, outcome = 'error', error_type = 'upstream_5xx' WHERE doc_id IN ({marks})", ok
    )
    for doc_id in ok:
        edited[doc_id] = {"outcome", "status", "error_type"}
    for event, renamed in (("admin_auth_failed", "x"), ("content_access", "y")):
        for (doc_id,) in db.execute("SELECT doc_id FROM records WHERE event_type = ?", (event,)).fetchall():
            edited[doc_id] = {"event_type"}
        db.execute("UPDATE records SET event_type = ? WHERE event_type = ?", (renamed, event))
    # The newest interaction moved a year on (out of the period and of the range read for it), and
    # another's start moved before the period.
    (last,) = db.execute("SELECT doc_id FROM records WHERE kind = 'interaction' ORDER BY seq DESC LIMIT 1").fetchone()
    db.execute("UPDATE records SET recorded_at = recorded_at + ? WHERE doc_id = ?", (YEAR, last))
    edited[last] = {"recorded_at"}
    (early,) = db.execute(
        "SELECT doc_id FROM records WHERE kind = 'interaction' AND doc_id NOT IN "
        f"({marks}) ORDER BY seq DESC LIMIT 1 OFFSET 3",
        ok,
    ).fetchone()
    db.execute("UPDATE records SET started_at = started_at - ? WHERE doc_id = ?", (YEAR, early))
    edited[early] = {"started_at"}
    db.commit()
    db.close()
    return edited


FIGURES = ("activity", "service_levels", "access", "phi", "anomalies")


def test_edited_columns_are_named_and_move_no_number_in_the_report(planted: Dataset, tmp_path: Path) -> None:
    before = copy_of(planted, tmp_path / "before")
    after = copy_of(planted, tmp_path / "after")
    path = after.settings.resolve_path(after.settings.audit.store_path)
    edited = edit_columns(path)

    async def named() -> dict[str, set[str]]:
        store = EmbeddedStore(path, read_only=True)
        await store.open()
        try:
            report = await verify(store, (await stored_public_keys(store)).get)
        finally:
            await store.close()
        found: dict[str, set[str]] = {}
        for f in report.findings:
            if f.kind == "column_mismatch":
                assert f.doc_id is not None
                found[f.doc_id] = set(f.detail.split("column(s) ")[1].split(" differ")[0].split(", "))
        return found

    assert asyncio.run(named()) == edited

    expected, got = before.report(), after.report()
    for section in FIGURES:
        assert got[section] == expected[section], section
    assert got["activity"]["totals"]["calls"] == expected["activity"]["totals"]["calls"] > 0
    assert got["anomalies"]["admin_auth_failures"] == 6
    assert len(got["access"]["events"]) == len(expected["access"]["events"]) == 1
    mismatched = [f for f in got["findings"] if f["rule"] == "integrity.column_mismatch"]
    assert {f["evidence"]["doc_id"] for f in mismatched} == set(edited)
    assert got["summary"]["verdict"] != "no exceptions found"
    assert got["integrity"]["ok"] is False
    assert got["integrity"]["mismatches"] == expected["integrity"]["mismatches"] + len(edited)


def test_search_does_not_return_a_record_for_a_value_it_does_not_hold(planted: Dataset, tmp_path: Path) -> None:
    dataset = copy_of(planted, tmp_path / "data")
    path = dataset.settings.resolve_path(dataset.settings.audit.store_path)

    async def failed() -> list[dict[str, Any]]:
        store = EmbeddedStore(path, read_only=True)
        await store.open()
        try:
            return await store.search(SearchQuery(outcome="error", limit=1000))
        finally:
            await store.close()

    genuine = asyncio.run(failed())
    assert genuine and all(d["interaction"]["outcome"] == "error" for d in genuine)
    edit_columns(path)
    assert [d["doc_id"] for d in asyncio.run(failed())] == [d["doc_id"] for d in genuine]
