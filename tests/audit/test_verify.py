"""Tamper evidence: every kind of tampering with the stored chain is detected and reported precisely.

The chains are written by the real trail, spool and shipper into the real embedded store; the
tampering is done with plain SQL on the store, as someone with database access could."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from sentinel.audit.verify import Finding
from tests.audit.support import Trail, running_trail


def kinds(findings: list[Finding]) -> list[tuple[str, int | None]]:
    return sorted((f.kind, f.seq) for f in findings)


@pytest.fixture
async def chain(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with running_trail(tmp_path, checkpoint_every=5) as trail:
        await trail.write(20)
        await trail.trail.stop()  # seals a final checkpoint over the last records
        await trail.ship()
        yield trail


async def test_untouched_chain_verifies(chain: Trail) -> None:
    report = await chain.verify()
    assert report.ok, report.findings
    (node,) = report.instances
    assert (node.records_checked, node.first_seq, node.last_seq) == (20, 1, 20)
    assert node.checkpoints_checked >= 4 and node.last_checkpoint_seq == 20 and node.unsealed == 0


async def test_modified_record(chain: Trail) -> None:
    doc = chain.body(7)
    doc["interaction"]["status_code"] = 500  # someone hides a failure
    chain.replace(7, doc)
    assert kinds((await chain.verify()).findings) == [("modified", 7)]


async def test_deleted_records(chain: Trail) -> None:
    chain.sql("DELETE FROM records WHERE seq IN (8, 9)")
    (finding,) = (await chain.verify()).findings
    assert (finding.kind, finding.seq, finding.seq_to) == ("deleted", 8, 9)


async def test_inserted_record_with_a_taken_sequence_number(chain: Trail) -> None:
    forged = chain.body(11)
    forged["doc_id"] = "node-a:000000000011-forged"
    forged["interaction"]["model_requested"] = "forged"
    chain.sql(
        "INSERT INTO records (doc_id, instance, seq, kind, recorded_at, prev_hash, hash, body) "
        "VALUES (?,?,?,?,?,?,?,?)",
        (
            forged["doc_id"],
            "node-a",
            11,
            "interaction",
            forged["recorded_at"],
            forged["prev_hash"],
            forged["hash"],
            orjson.dumps(forged).decode(),
        ),
    )
    findings = (await chain.verify()).findings
    inserted = [f for f in findings if f.kind == "inserted"]
    assert len(inserted) == 1 and inserted[0].seq == 11 and inserted[0].doc_id == forged["doc_id"]


async def test_inserted_record_that_links_to_nothing(chain: Trail) -> None:
    forged = chain.body(12)
    forged["prev_hash"] = "f" * 64  # a fabricated record slipped in place of a real one
    chain.replace(12, forged, rehash=True)
    assert kinds((await chain.verify()).findings) == [("inserted", 12)]


async def test_reordered_records(chain: Trail) -> None:
    five, six = chain.body(5), chain.body(6)
    five["seq"], six["seq"] = 6, 5  # swap their positions, keeping each record's own hash
    chain.sql("UPDATE records SET seq = -1 WHERE seq = 5")
    chain.replace(6, six)
    chain.replace(-1, five)
    findings = (await chain.verify()).findings
    assert [f.seq for f in findings if f.kind == "reordered"] == [5, 6]
    assert {f.seq for f in findings} == {5, 6}  # and nothing about the records around them


async def test_truncated_tail_is_caught_by_the_checkpoint(chain: Trail) -> None:
    chain.sql("DELETE FROM records WHERE seq > 16")
    (finding,) = (await chain.verify()).findings
    assert (finding.kind, finding.seq, finding.seq_to) == ("truncated", 17, 20)


async def test_rewritten_chain_is_caught_by_the_checkpoint(chain: Trail) -> None:
    """Modify record 3 and recompute every later hash: the chain is consistent, the signature is not."""
    previous = chain.body(2)["hash"]
    for seq in range(3, 21):
        doc = chain.body(seq)
        doc["prev_hash"] = previous
        if seq == 3:
            doc["interaction"]["outcome"] = "ok"
            doc["interaction"]["model_requested"] = "rewritten"
        chain.replace(seq, doc, rehash=True)
        previous = doc["hash"]
    findings = (await chain.verify()).findings
    assert {f.kind for f in findings} == {"checkpoint_mismatch"}
    checkpoints = sorted(c["seq"] for c in await chain.store.checkpoints("node-a"))
    first_after_edit = next(seq for seq in checkpoints if seq >= 3)
    assert sorted(f.seq for f in findings) == [seq for seq in checkpoints if seq >= 3]  # type: ignore[type-var]
    assert min(f.seq for f in findings if f.seq is not None) == first_after_edit


async def test_forged_and_deleted_checkpoints(chain: Trail) -> None:
    import sqlite3

    db = sqlite3.connect(chain.store.path)
    rows = db.execute("SELECT doc_id, body FROM checkpoints ORDER BY seq").fetchall()
    forged = orjson.loads(rows[1][1])
    forged["hash"] = "a" * 64
    db.execute("UPDATE checkpoints SET body = ? WHERE doc_id = ?", (orjson.dumps(forged).decode(), rows[1][0]))
    resigned = orjson.loads(rows[2][1])
    resigned["signature"] = base64.b64encode(b"x" * 64).decode()
    db.execute("UPDATE checkpoints SET body = ? WHERE doc_id = ?", (orjson.dumps(resigned).decode(), rows[2][0]))
    db.commit()
    findings = (await chain.verify()).findings
    following = orjson.loads(rows[3][1])["seq"]
    assert sorted((f.kind, f.seq) for f in findings) == [
        ("bad_signature", forged["seq"]),
        ("bad_signature", resigned["seq"]),
        ("checkpoint_missing", following),  # its predecessor was altered
    ]
    db.execute("DELETE FROM checkpoints WHERE doc_id = ?", (rows[1][0],))
    db.execute("UPDATE checkpoints SET body = ? WHERE doc_id = ?", (rows[2][1], rows[2][0]))
    db.commit()
    db.close()
    findings = (await chain.verify()).findings
    assert [(f.kind, f.seq) for f in findings] == [("checkpoint_missing", orjson.loads(rows[2][1])["seq"])]


async def test_unknown_signing_key_is_not_trusted(chain: Trail) -> None:
    from sentinel.audit.verify import verify

    report = await verify(chain.store, lambda kid: None)
    assert {f.kind for f in report.findings} == {"unknown_key"}


async def test_verify_a_time_range(chain: Trail) -> None:
    docs = [chain.body(seq) for seq in (6, 10)]
    report = await chain.verify(since=docs[0]["recorded_at"], until=docs[1]["recorded_at"])
    assert report.ok and report.records_checked == 5
    chain.sql("DELETE FROM records WHERE seq = 3")  # outside the range: not this report's business
    assert (await chain.verify(since=docs[0]["recorded_at"], until=docs[1]["recorded_at"])).ok
    assert not (await chain.verify()).ok


async def test_several_instances_keep_their_own_chains(tmp_path: Path) -> None:
    async with (
        running_trail(tmp_path / "a", instance="node-a") as a,
        running_trail(tmp_path / "b", instance="node-b") as b,
    ):
        await a.write(3)
        await b.write(4)
        b.shipper.store = a.store  # both ship into one store, as two instances behind a balancer do
        await a.trail.stop()
        await b.trail.stop()
        await a.ship()
        await b.ship()
        b_keys = {k.kid: b.keyring.public_key(k.kid) for k in b.keyring.all_keys() if k.purpose == "signing"}
        a_keys = {k.kid: a.keyring.public_key(k.kid) for k in a.keyring.all_keys() if k.purpose == "signing"}
        from sentinel.audit.verify import verify

        report = await verify(a.store, {**a_keys, **b_keys}.get)
        assert report.ok
        assert sorted((r.instance, r.records_checked) for r in report.instances) == [("node-a", 3), ("node-b", 4)]
