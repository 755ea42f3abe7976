"""`verify` on a real embedded store tampered with through SQL: the findings do not depend on the page
size or on how many worker processes read the pages, and match the whole-chain walk of every link."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.audit.record import GENESIS, digest, encode
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.audit.verify import PublicKeys, verify
from sentinel.audit.walk import Finding
from tests.audit.reference_walk import whole_chain_walk
from tests.audit.support import running_trail

RECORDS = 60


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """A 60-record chain with a checkpoint every 7 records, and its signing keys."""
    tmp = tmp_path_factory.mktemp("pristine")

    async def build() -> dict[str, bytes]:
        async with running_trail(tmp, checkpoint_every=7) as t:
            await t.write(RECORDS)
            await t.ship()
            return {
                k.kid: t.keyring.public_key(k.kid).public_bytes_raw()
                for k in t.keyring.all_keys()
                if k.purpose == "signing"
            }

    return tmp / "store.db", asyncio.run(build())


def _keys(raw: dict[str, bytes]) -> PublicKeys:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = {kid: Ed25519PublicKey.from_public_bytes(b) for kid, b in raw.items()}
    return keys.get


def tamper(path: Path, op: str, seq: int) -> None:
    db = sqlite3.connect(path)
    row = db.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        db.close()
        return
    import orjson

    doc: dict[str, Any] = orjson.loads(row[0])
    if op == "delete":
        db.execute("DELETE FROM records WHERE seq = ?", (seq,))
    elif op == "modify":
        doc["interaction"]["model_requested"] = "edited"
        db.execute("UPDATE records SET body = ? WHERE seq = ?", (encode(doc).decode(), seq))
    elif op == "rehash":
        doc["interaction"]["model_requested"] = "rewritten"
        doc["hash"] = digest(doc)
        db.execute("UPDATE records SET body = ?, hash = ? WHERE seq = ?", (encode(doc).decode(), doc["hash"], seq))
    elif op == "duplicate":
        doc["doc_id"] += "-forged"
        doc["interaction"]["model_requested"] = "forged"
        db.execute(
            "INSERT INTO records (doc_id, instance, seq, kind, recorded_at, prev_hash, hash, body) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (
                doc["doc_id"],
                doc["instance"],
                seq,
                doc["kind"],
                doc["recorded_at"],
                doc["prev_hash"],
                doc["hash"],
                encode(doc).decode(),
            ),
        )
    elif op == "swap":
        db.execute("UPDATE records SET seq = -1 WHERE seq = ?", (seq,))
        db.execute("UPDATE records SET seq = ? WHERE seq = ?", (seq, seq + 1))
        db.execute("UPDATE records SET seq = ? WHERE seq = -1", (seq + 1,))
    elif op == "truncate":
        db.execute("DELETE FROM records WHERE seq >= ?", (seq,))
    db.commit()
    db.close()


async def _all_ways(path: Path, keys: PublicKeys, processes: tuple[int, ...]) -> list[list[tuple[Any, ...]]]:
    store = EmbeddedStore(path, read_only=True)
    await store.open()
    try:
        out = []
        for page in (1, 2, 7, 50_000):
            for n in processes:
                report = await verify(store, keys, page=page, processes=n)
                out.append(_plain(report.findings))
        if 2 in processes:  # whole pages skipped over by the walk (a short reach makes them short)
            for page, reach in ((12, 2), (20, 4)):
                out.append(_plain((await verify(store, keys, page=page, processes=2, reach=reach)).findings))
        # The whole-chain walk over every link at once, with the checkpoints `verify` found valid.
        links = [link async for link in store.chain_links("node-a")]
        valid = {}
        report = await verify(store, keys)
        bad = {f.seq for f in report.findings if f.kind in ("bad_signature", "unknown_key")}
        for checkpoint in await store.checkpoints("node-a"):
            if checkpoint["seq"] not in bad:
                valid[checkpoint["seq"]] = checkpoint
        checkpoint_findings = [
            f for f in report.findings if f.kind in ("bad_signature", "unknown_key", "checkpoint_missing")
        ]
        out.append(_plain(whole_chain_walk("node-a", links, valid, start_prev=GENESIS) + checkpoint_findings))
        return out
    finally:
        await store.close()


def _plain(findings: list[Finding]) -> list[tuple[Any, ...]]:
    """The chain's findings. Some tampering here edits columns without the body (`swap` moves records by
    their `seq` column): `column_mismatch` says so too, the reference walk knows no columns, and
    tests/audit/test_columns.py tests those findings."""
    return sorted((f.kind, f.seq, f.seq_to, f.doc_id) for f in findings if f.kind != "column_mismatch")


OPS = ["delete", "modify", "rehash", "duplicate", "swap", "truncate"]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(picks=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 12)), min_size=1, max_size=3))
def test_findings_do_not_depend_on_pages(
    pristine: tuple[Path, dict[str, bytes]], tmp_path: Path, picks: list[tuple[str, int]]
) -> None:
    source, raw = pristine
    path = tmp_path / f"store-{abs(hash(tuple(picks)))}.db"
    shutil.copyfile(source, path)
    for index, (op, offset) in enumerate(picks):
        tamper(path, op, 2 + index * 19 + offset)  # places 7+ apart: each tamper stands alone
    results = asyncio.run(_all_ways(path, _keys(raw), (1,)))
    assert results[0]  # the tampering shows
    assert all(r == results[0] for r in results), results


def test_worker_processes_find_what_one_process_finds(pristine: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    source, raw = pristine
    path = tmp_path / "store.db"
    shutil.copyfile(source, path)
    for op, seq in [("duplicate", 7), ("swap", 14), ("rehash", 21), ("delete", 28), ("modify", 35), ("truncate", 50)]:
        tamper(path, op, seq)
    results = asyncio.run(_all_ways(path, _keys(raw), (1, 2)))
    assert all(r == results[0] for r in results), results
    assert {(kind, seq) for kind, seq, *_ in results[0]} == {
        ("inserted", 7),
        ("reordered", 14),
        ("reordered", 15),
        ("checkpoint_mismatch", 15),  # a checkpoint vouches for the record that was at 15
        ("inserted", 22),
        ("deleted", 28),
        ("modified", 35),
        ("truncated", 50),
    }


def test_a_forged_checkpoint_beside_a_genuine_one_changes_nothing_but_its_own_finding(
    pristine: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    """Workers compare pages with the checkpoints as stored, before signatures are checked: a forged
    one (bad signature) claiming another hash for a sequence number makes that page a closer look,
    never a finding about the records; only the checkpoints themselves are found wrong."""
    import orjson

    source, raw = pristine
    path = tmp_path / "store.db"
    shutil.copyfile(source, path)
    db = sqlite3.connect(path)
    (body,) = db.execute("SELECT body FROM checkpoints ORDER BY seq LIMIT 1 OFFSET 2").fetchone()
    forged = orjson.loads(body)
    forged.update(doc_id=forged["doc_id"] + "-forged", hash="0" * 64)
    db.execute(
        "INSERT INTO checkpoints (doc_id, instance, seq, body) VALUES (?,?,?,?)",
        (forged["doc_id"], forged["instance"], forged["seq"], orjson.dumps(forged).decode()),
    )
    db.commit()
    db.close()
    results = asyncio.run(_all_ways(path, _keys(raw), (1, 2)))
    assert all(r == results[0] for r in results), results
    # Its signature, and the checkpoint after it no longer chaining to the one before: nothing else.
    assert {kind for kind, *_ in results[0]} == {"bad_signature", "checkpoint_missing"}
