"""Records after the last signed checkpoint (issue #13): no signature vouches for them yet, so the
writer's own copy does. An attacker with the store appends a well-linked, correctly hashed record, or
rewrites the newest one; checked against the writer's spool, each is named."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from sentinel.audit.note import Checkpoint
from sentinel.audit.record import Event, digest, encode
from sentinel.audit.spool import WriterCopy
from sentinel.audit.store.embedded import COLUMN_NAMES, record_columns, stored_columns
from sentinel.audit.verify import VerifyReport, verify
from tests.audit.support import Trail, running_trail


def _keys(t: Trail) -> Any:
    return {k.kid: t.keyring.public_key(k.kid) for k in t.keyring.all_keys() if k.purpose == "signing"}.get


def _insert(t: Trail, doc: dict[str, Any]) -> None:
    names = ", ".join((*COLUMN_NAMES, "body"))
    marks = ", ".join("?" * (len(COLUMN_NAMES) + 1))
    t.sql(f"INSERT INTO records ({names}) VALUES ({marks})", (*record_columns(doc), encode(doc).decode()))


def _forge_after(t: Trail, seq: int) -> dict[str, Any]:
    """A record that links to `seq` and hashes right: all an attacker without the writer can make."""
    doc = t.body(seq)
    doc["prev_hash"], doc["seq"] = doc["hash"], seq + 1
    doc["doc_id"] = f"{doc['instance']}:{seq + 1:012d}"
    doc["interaction"]["model_requested"] = "forged"
    doc["hash"] = digest(doc)
    return doc


def _run(tmp_path: Path, attack: str) -> tuple[VerifyReport, VerifyReport]:
    async def run() -> tuple[VerifyReport, VerifyReport]:
        async with running_trail(tmp_path, checkpoint_every=10) as t:
            await t.write(25)
            await t.ship()
            if attack == "append":
                _insert(t, _forge_after(t, 25))
            elif attack == "rewrite":
                doc = t.body(25)
                doc["interaction"]["model_requested"] = "rewritten"
                t.replace(25, doc, rehash=True)
            elif attack == "unshipped":
                await t.write(5)  # in the spool, not yet in the store
            elif attack == "delete-tail":
                t.sql("DELETE FROM records WHERE seq > 23")
            elif attack == "delete-chain":
                t.sql("DELETE FROM records")
                t.sql("DELETE FROM checkpoints")
            writer = WriterCopy("node-a", t.spool.path)
            return await verify(t.store, _keys(t), writers=[writer]), await verify(t.store, _keys(t))

    return asyncio.run(run())


def _plain(report: VerifyReport) -> list[tuple[str, int | None, int | None]]:
    return sorted((f.kind, f.seq, f.seq_to) for f in report.findings)


def test_the_writers_copy_vouches_for_records_after_the_last_checkpoint(tmp_path: Path) -> None:
    checked, _ = _run(tmp_path, "none")
    (chain,) = checked.instances
    assert (checked.findings, chain.last_checkpoint_seq, chain.unsealed, chain.writer_vouched) == ([], 21, 4, True)


def test_records_still_in_the_spool_are_not_a_finding(tmp_path: Path) -> None:
    checked, _ = _run(tmp_path, "unshipped")
    assert checked.findings == [] and checked.instances[0].writer_vouched


def test_a_record_appended_outside_the_writer_is_named(tmp_path: Path) -> None:
    checked, unchecked = _run(tmp_path, "append")
    assert _plain(checked) == [("outside_writer", 26, 26)]
    assert unchecked.findings == []  # linked and hashed right: only the writer's copy shows it


def test_a_rewritten_newest_record_is_named(tmp_path: Path) -> None:
    checked, unchecked = _run(tmp_path, "rewrite")
    assert _plain(checked) == [("head_mismatch", 25, None)]
    assert unchecked.findings == []


def test_shipped_records_deleted_after_the_last_checkpoint_are_named(tmp_path: Path) -> None:
    checked, unchecked = _run(tmp_path, "delete-tail")
    assert _plain(checked) == [("truncated", 24, 25)]
    assert not checked.instances[0].writer_vouched
    assert unchecked.findings == []  # no checkpoint covers them: only the writer's copy shows it


def test_a_whole_chain_deleted_is_named(tmp_path: Path) -> None:
    checked, unchecked = _run(tmp_path, "delete-chain")
    assert _plain(checked) == [("truncated", 1, 25)]
    assert unchecked.instances == []


def test_columns_read_without_parsing_the_record_are_those_of_the_parsed_record(tmp_path: Path) -> None:
    """Verification alone reads the columns a body implies without parsing its content
    (`stored_columns`); they must be exactly what `record_columns` makes of the whole parsed record,
    for interactions and events alike, or a genuine record would show as edited."""

    async def bodies() -> list[bytes]:
        async with running_trail(tmp_path) as t:
            await t.write(20)
            await t.trail.record_event(Event("content_access", "admin-api:alice", {"records": ["x"]}, reason="why"))
            await t.ship()
            return [
                bytes(b) for (b,) in sqlite3.connect(t.store.path).execute("SELECT CAST(body AS BLOB) FROM records")
            ]

    stored = asyncio.run(bodies())
    assert len(stored) == 21
    for body in stored:
        assert stored_columns(body) == record_columns(orjson.loads(body))
    assert stored_columns(b"not json") is None


def test_anchored_checkpoints_of_records_not_yet_shipped_are_not_a_truncation(tmp_path: Path) -> None:
    """The publisher anchors from the spool, maybe before the shipper has moved those records: with the
    writer's copy they are on their way, not gone; without it, the anchors say they are missing."""

    async def run() -> tuple[VerifyReport, VerifyReport]:
        async with running_trail(tmp_path, checkpoint_every=7) as t:
            await t.write(10)
            await t.ship()
            await t.write(10, start=11)  # checkpoint 15 signed, records 11..20 only in the spool
            (body,) = t.spool.db.execute("SELECT body FROM checkpoints WHERE seq = 15").fetchone()
            note = orjson.loads(body)["note"]
            root = Checkpoint.parse(note.rpartition("\n\n")[0] + "\n").root
            anchored = {"node-a": {15: root}}
            writer = WriterCopy("node-a", t.spool.path)
            return (
                await verify(t.store, _keys(t), writers=[writer], anchored=anchored),
                await verify(t.store, _keys(t), anchored=anchored),
            )

    pending, alone = asyncio.run(run())
    assert pending.findings == []
    assert _plain(alone) == [("truncated", 11, 15)]


def test_a_spool_edited_or_padded_by_the_operator_does_not_waive_an_anchored_size(tmp_path: Path) -> None:
    """The spool is in the operator's data directory; the anchored roots are not. Unshipped records count
    towards an anchored size only when their leaves give its root: a record changed in the spool, a gap,
    or a junk row far ahead leave the anchored records unaccounted for."""

    async def run() -> list[list[tuple[str, int | None, int | None]]]:
        async with running_trail(tmp_path, checkpoint_every=7) as t:
            await t.write(10)
            await t.ship()
            await t.write(10, start=11)  # checkpoint 15 signed and anchored; records 11..20 only in the spool
            (body,) = t.spool.db.execute("SELECT body FROM checkpoints WHERE seq = 15").fetchone()
            root = Checkpoint.parse(orjson.loads(body)["note"].rpartition("\n\n")[0] + "\n").root
            anchored = {"node-a": {15: root}}
            writer = WriterCopy("node-a", t.spool.path)
            found = []
            db = t.spool.db
            (original,) = db.execute("SELECT body FROM records WHERE seq = 13").fetchone()
            (other,) = db.execute("SELECT body FROM records WHERE seq = 12").fetchone()
            db.execute("UPDATE records SET body = ? WHERE seq = 13", (other,))  # a record changed
            db.commit()
            found.append(_plain(await verify(t.store, _keys(t), writers=[writer], anchored=anchored)))
            db.execute("UPDATE records SET body = ? WHERE seq = 13", (original,))
            db.execute(
                "INSERT INTO records (seq, doc_id, kind, recorded_at, body) SELECT 1000000, 'x', kind, "
                "recorded_at, body FROM records WHERE seq = 14"
            )  # padded far ahead ...
            db.execute("DELETE FROM records WHERE seq BETWEEN 12 AND 14")  # ... with a gap
            db.commit()
            found.append(_plain(await verify(t.store, _keys(t), writers=[writer], anchored=anchored)))
            return found

    changed, padded = asyncio.run(run())
    assert ("truncated", 11, 15) in changed
    assert ("truncated", 11, 15) in padded


def test_a_period_with_no_records_of_a_chain_is_not_a_truncation(tmp_path: Path) -> None:
    async def run() -> VerifyReport:
        async with running_trail(tmp_path, checkpoint_every=7) as t:
            await t.write(10)
            await t.ship()
            later = max(r[0] for r in t.spool.db.execute("SELECT recorded_at FROM records")) + 3600
            return await verify(t.store, _keys(t), since=later, until=later + 3600)

    report = asyncio.run(run())
    assert report.findings == [] and report.records_checked == 0
