"""A report verified the moment it is issued: its `report_issued` record is durable in the writer's spool
before the report is handed out, and verification finds it there until the shipper has moved it to the
store (`POST /report/verify` once said "modified or not issued" for a PDF just returned by `GET /report`).

The issuing service here is the CLI's, whose shipper runs only at stop: while it runs, the record is in
its spool and not in the store, deterministically."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from sentinel.audit.pins import configured_pins, trusted_keys
from sentinel.audit.service import AuditService, local_writers
from sentinel.report.issue import issue_report
from sentinel.report.signing import Verdict, find_issued, verify_report
from tests.report.conftest import Dataset


def test_a_report_verifies_before_its_record_is_shipped(
    clean: Dataset, fresh_copy: Callable[[Dataset], Dataset]
) -> None:
    dataset = fresh_copy(clean)
    period = dataset.period()

    async def run() -> tuple[Verdict, Verdict, Verdict, int]:
        service = AuditService(dataset.settings, CollectorRegistry(), "report-test", cli=True)
        await service.start()
        try:
            issued = await issue_report(service, period, "pdf", actor="cli:tester", include_reasons=False)
            trusted = await trusted_keys(service.store, configured_pins(dataset.settings))
            in_store = len(await find_issued(service.store, issued.sha256))
            writers = local_writers(dataset.settings)
            fresh = await verify_report(service.store, trusted, issued.body, writers=writers)
            store_only = await verify_report(service.store, trusted, issued.body)
            changed = await verify_report(service.store, trusted, issued.body + b" ", writers=writers)
            return fresh, store_only, changed, in_store
        finally:
            await service.stop()

    with dataset.at_dataset_time():
        fresh, store_only, changed, in_store = asyncio.run(run())
    assert in_store == 0  # not shipped yet: the case that failed
    assert fresh.ok, fresh.problems
    assert fresh.issued is not None and fresh.issued["sealed"] is False and fresh.issued["format"] == "pdf"
    assert "not yet shipped" in fresh.notes[0]
    assert not store_only.ok  # the store alone cannot know it yet
    assert not changed.ok and "modified or not issued" in changed.problems[0]


def test_a_forged_spool_record_does_not_pass(clean: Dataset, fresh_copy: Callable[[Dataset], Dataset]) -> None:
    """A `report_issued` record in the spool whose bytes were edited (its hash no longer holds) is refused."""
    import sqlite3

    dataset = fresh_copy(clean)
    period = dataset.period()

    async def run() -> Verdict:
        service = AuditService(dataset.settings, CollectorRegistry(), "report-test", cli=True)
        await service.start()
        try:
            issued = await issue_report(service, period, "json", actor="cli:tester", include_reasons=False)
            spool = service.spool.path
            with sqlite3.connect(spool) as db:
                (seq, body), *_ = db.execute(
                    "SELECT seq, body FROM records WHERE shipped = 0 AND kind = 'event' ORDER BY seq DESC LIMIT 1"
                ).fetchall()
                db.execute(
                    "UPDATE records SET body = ? WHERE seq = ?",
                    (bytes(body).replace(b"cli:tester", b"cli:mallory"), seq),
                )
            trusted = await trusted_keys(service.store, configured_pins(dataset.settings))
            return await verify_report(service.store, trusted, issued.body, writers=local_writers(dataset.settings))
        finally:
            await service.stop()

    with dataset.at_dataset_time():
        verdict = asyncio.run(run())
    assert not verdict.ok
    assert any("was altered" in p for p in verdict.problems)
