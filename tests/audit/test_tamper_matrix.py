"""Tamper evidence on both stores (issue #13): each way of tampering with a stored trail is written once,
as an edit of the stored documents and checkpoints, and applied to the embedded store (its rows, as
someone with database access would) and to Elasticsearch's documents; verification must name the same
findings at the same sequence numbers on each.

Elasticsearch cannot run here: its side is the documented-subset stand-in in tests/report/es_standin.py.
The trail is written by the real trail, spool and shipper: 40 records, checkpoints signed at 1, 8, 15,
22, 29 and 36, records 37 to 40 after the last checkpoint (vouched for by the writer's spool only)."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from elasticsearch import AsyncElasticsearch

from sentinel.audit.chain import ChainHead, make_checkpoint
from sentinel.audit.record import digest, encode
from sentinel.audit.spool import WriterCopy
from sentinel.audit.store import AuditStore
from sentinel.audit.store.elasticsearch import ElasticsearchStore
from sentinel.audit.store.embedded import COLUMN_NAMES, record_row
from sentinel.audit.verify import VerifyReport, verify
from tests.audit.support import Trail, running_trail
from tests.report.es_standin import running_standin

INSTANCE = "node-a"
RECORDS = 40
CHECKPOINTS = [1, 8, 15, 22, 29, 36]
STORES = ("embedded", "elasticsearch")


@dataclass
class Held:
    """What a store holds, parsed: its records and checkpoints, and edits of the embedded store's
    search columns (by doc id), which only that store keeps apart from the signed body."""

    records: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, seq: int) -> dict[str, Any]:
        (doc,) = (d for d in self.records if d["seq"] == seq)
        return doc

    def checkpoint(self, seq: int) -> dict[str, Any]:
        (checkpoint,) = (c for c in self.checkpoints if c["seq"] == seq)
        return checkpoint


def doc_id(seq: int) -> str:
    return f"{INSTANCE}:{seq:012d}"


# The tampering, once each, on the parsed documents.


def modify_body(held: Held) -> None:
    held.record(10)["interaction"]["status_code"] = 500  # a failure hidden, the hash left as it was


def delete(held: Held) -> None:
    held.records = [d for d in held.records if d["seq"] not in (12, 13)]


def insert_at_a_taken_seq(held: Held) -> None:
    forged = copy.deepcopy(held.record(18))
    forged["doc_id"] = f"{doc_id(18)}-forged"
    forged["interaction"]["model_requested"] = "forged"
    forged["hash"] = digest(forged)
    held.records.append(forged)


def insert_linking_to_nothing(held: Held) -> None:
    forged = held.record(19)
    forged["prev_hash"] = "f" * 64  # a fabricated record in the place of a real one
    forged["hash"] = digest(forged)


def reorder(held: Held) -> None:
    five, six = held.record(5), held.record(6)
    five["seq"], six["seq"] = 6, 5  # each keeps its own hash


def delete_the_unsealed_tail(held: Held) -> None:
    """Shipped records after the last checkpoint removed: no signature covers them, the spool does."""
    held.records = [d for d in held.records if d["seq"] <= 38]


def truncate_keeping_checkpoints(held: Held) -> None:
    held.records = [d for d in held.records if d["seq"] <= 31]


UNTRUSTED = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def resign_with_an_unknown_key(held: Held) -> None:
    previous: dict[str, Any] | None = None
    resigned = []
    for checkpoint in sorted(held.checkpoints, key=lambda c: c["seq"]):
        head = ChainHead(checkpoint["seq"], checkpoint["hash"])
        previous = make_checkpoint(INSTANCE, head, previous, "sk-untrusted", UNTRUSTED)
        resigned.append(previous)
    held.checkpoints = resigned


def rewrite_without_resigning(held: Held) -> None:
    """Record 3 changed, it and every later record re-hashed and relinked: a consistent chain."""
    previous = held.record(2)["hash"]
    for seq in range(3, RECORDS + 1):
        doc = held.record(seq)
        doc["prev_hash"] = previous
        if seq == 3:
            doc["interaction"]["model_requested"] = "rewritten"
        doc["hash"] = previous = digest(doc)


def forge_a_checkpoint(held: Held) -> None:
    held.checkpoint(15)["hash"] = "a" * 64  # its signature no longer covers it


def delete_a_checkpoint(held: Held) -> None:
    held.checkpoints = [c for c in held.checkpoints if c["seq"] != 15]


def append_outside_the_writer(held: Held) -> None:
    """A record after the newest, linked and hashed right: all an attacker without the writer can make."""
    forged = copy.deepcopy(held.record(RECORDS))
    forged["prev_hash"], forged["seq"], forged["doc_id"] = forged["hash"], RECORDS + 1, doc_id(RECORDS + 1)
    forged["interaction"]["model_requested"] = "forged"
    forged["hash"] = digest(forged)
    held.records.append(forged)


def rewrite_the_newest(held: Held) -> None:
    newest = held.record(RECORDS)
    newest["interaction"]["model_requested"] = "rewritten"
    newest["hash"] = digest(newest)


def edit_a_column(held: Held) -> None:
    held.columns[doc_id(10)] = {"status": 500}


def untouched(held: Held) -> None:
    pass


Expected = tuple[str, int, int | None]


@dataclass(frozen=True)
class Scenario:
    name: str
    tamper: Callable[[Held], None]
    findings: Sequence[Expected]
    """(kind, seq, seq_to) of every finding, verified with the writer's spool."""
    named: str = ""
    """What every finding must name, in its doc id or detail."""
    stores: tuple[str, ...] = STORES


SCENARIOS = [
    Scenario("untouched", untouched, []),
    Scenario("modified body", modify_body, [("modified", 10, None)], named=doc_id(10)),
    Scenario("deleted", delete, [("deleted", 12, 13)]),
    Scenario("inserted at a taken seq", insert_at_a_taken_seq, [("inserted", 18, None)], named=f"{doc_id(18)}-forged"),
    Scenario("inserted linking to nothing", insert_linking_to_nothing, [("inserted", 19, None)], named=doc_id(19)),
    Scenario(
        "reordered",
        reorder,
        # the sequence number is signed too: each moved record's body no longer matches its hash
        [("modified", 5, None), ("modified", 6, None), ("reordered", 5, None), ("reordered", 6, None)],
    ),
    Scenario(
        "truncated with checkpoints kept",
        truncate_keeping_checkpoints,
        # up to the last checkpoint by its signature, after it by the writer's copy
        [("truncated", 32, 36), ("truncated", 37, RECORDS)],
    ),
    Scenario("unsealed tail deleted", delete_the_unsealed_tail, [("truncated", 39, RECORDS)]),
    Scenario(
        "unknown key",
        resign_with_an_unknown_key,
        [("unknown_key", seq, None) for seq in CHECKPOINTS],
        named="sk-untrusted",
    ),
    Scenario(
        "rewritten without re-signing",
        rewrite_without_resigning,
        # every checkpoint from the edit on, and the newest record is not the writer's
        [("checkpoint_mismatch", seq, None) for seq in CHECKPOINTS if seq >= 3] + [("head_mismatch", RECORDS, None)],
    ),
    Scenario("forged checkpoint", forge_a_checkpoint, [("bad_signature", 15, None), ("checkpoint_missing", 22, None)]),
    Scenario("deleted checkpoint", delete_a_checkpoint, [("checkpoint_missing", 22, None)]),
    Scenario("appended outside the writer", append_outside_the_writer, [("outside_writer", RECORDS + 1, RECORDS + 1)]),
    Scenario("newest rewritten and re-hashed", rewrite_the_newest, [("head_mismatch", RECORDS, None)]),
    # Elasticsearch keeps no copy of a field apart from the document: the embedded store only.
    Scenario("column edited", edit_a_column, [("column_mismatch", 10, None)], named="status", stores=("embedded",)),
]


# Applying the tampering to each store.


def onto_embedded(path: Path, genuine: Held, tampered: Held) -> None:
    """Rewrite the rows that differ, each consistent with its body (`record_row`), then the column edits."""
    before = {d["doc_id"]: d for d in genuine.records}
    after = {d["doc_id"]: d for d in tampered.records}
    assert len(after) == len(tampered.records), "one record per doc id: the store's primary key"
    names = (*COLUMN_NAMES, "body")
    db = sqlite3.connect(path)
    db.executemany("DELETE FROM records WHERE doc_id = ?", [(gone,) for gone in before.keys() - after.keys()])
    db.executemany(
        f"INSERT OR REPLACE INTO records ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [record_row(doc, encode(doc)) for key, doc in after.items() if before.get(key) != doc],
    )
    for key, edits in tampered.columns.items():
        for column, value in edits.items():
            assert column in COLUMN_NAMES
            db.execute(f"UPDATE records SET {column} = ? WHERE doc_id = ?", (value, key))
    checkpoints_before = {c["doc_id"]: c for c in genuine.checkpoints}
    checkpoints_after = {c["doc_id"]: c for c in tampered.checkpoints}
    db.executemany(
        "DELETE FROM checkpoints WHERE doc_id = ?",
        [(gone,) for gone in checkpoints_before.keys() - checkpoints_after.keys()],
    )
    db.executemany(
        "INSERT OR REPLACE INTO checkpoints (doc_id, instance, seq, body) VALUES (?, ?, ?, ?)",
        [
            (key, c["instance"], c["seq"], orjson.dumps(c).decode())
            for key, c in checkpoints_after.items()
            if checkpoints_before.get(key) != c
        ],
    )
    db.commit()
    db.close()


@asynccontextmanager
async def on_elasticsearch(held: Held) -> AsyncIterator[ElasticsearchStore]:
    """The documents and checkpoints as indexed, tampered with in place, behind the Elasticsearch
    stand-in (no Elasticsearch can run here)."""
    assert not held.columns, "Elasticsearch keeps no separate columns"
    async with running_standin() as standin:
        standin.indices["sentinel-audit"] = copy.deepcopy(held.records)
        standin.indices["sentinel-audit-checkpoints"] = copy.deepcopy(held.checkpoints)
        store = ElasticsearchStore(AsyncElasticsearch([standin.url]), prefix="sentinel-audit")
        try:
            yield store
        finally:
            await store.close()


async def held_by(store: AuditStore) -> Held:
    return Held([doc async for doc in store.chain(INSTANCE)], await store.checkpoints(INSTANCE))


@asynccontextmanager
async def genuine_trail(tmp_path: Path) -> AsyncIterator[tuple[Trail, Held]]:
    async with running_trail(tmp_path, checkpoint_every=7, instance=INSTANCE) as trail:
        await trail.write(RECORDS)
        await trail.ship()
        genuine = await held_by(trail.store)
        assert len(genuine.records) == RECORDS
        assert [c["seq"] for c in genuine.checkpoints] == CHECKPOINTS
        yield trail, genuine


async def verified(trail: Trail, store: str, genuine: Held, tampered: Held) -> VerifyReport:
    """`tampered` put into `store` and verified there, with the writer's spool."""
    keys = {k.kid: trail.keyring.public_key(k.kid) for k in trail.keyring.all_keys() if k.purpose == "signing"}
    writers = [WriterCopy(INSTANCE, trail.spool.path)]
    if store == "embedded":
        onto_embedded(trail.store.path, genuine, tampered)
        return await verify(trail.store, keys.get, writers=writers)
    async with on_elasticsearch(tampered) as elasticsearch:
        return await verify(elasticsearch, keys.get, writers=writers)


@pytest.mark.parametrize(
    ("store", "scenario"),
    [pytest.param(store, s, id=f"{store}-{s.name.replace(' ', '-')}") for s in SCENARIOS for store in s.stores],
)
async def test_tampering_is_named_alike_on_both_stores(tmp_path: Path, store: str, scenario: Scenario) -> None:
    """One scenario on one store: exactly the expected findings, at the expected sequence numbers. The
    Elasticsearch store runs against a stand-in (tests/report/es_standin.py): no Elasticsearch can run
    here."""
    async with genuine_trail(tmp_path) as (trail, genuine):
        tampered = copy.deepcopy(genuine)
        scenario.tamper(tampered)
        report = await verified(trail, store, genuine, tampered)
    assert sorted((f.kind, f.seq, f.seq_to) for f in report.findings) == sorted(scenario.findings)
    assert all(f.instance == INSTANCE for f in report.findings)
    if scenario.named:
        assert all(scenario.named in f"{f.doc_id} {f.detail}" for f in report.findings), report.findings


async def test_the_untouched_trail_reads_the_same_on_both_stores(tmp_path: Path) -> None:
    """The control: no findings on either store, and the same account of the chain (records checked,
    checkpoints, the unsealed tail vouched for by the writer's spool). The Elasticsearch store runs
    against a stand-in (tests/report/es_standin.py): no Elasticsearch can run here."""
    async with genuine_trail(tmp_path) as (trail, genuine):
        reports = [await verified(trail, store, genuine, genuine) for store in STORES]
    assert all(report.ok for report in reports), [report.findings for report in reports]
    accounts = [
        (r.records_checked, r.checkpoints_checked, r.last_checkpoint_seq, r.unsealed, r.writer_vouched, r.last_hash)
        for report in reports
        for r in report.instances
    ]
    assert accounts == [(RECORDS, len(CHECKPOINTS), 36, 4, True, genuine.record(RECORDS)["hash"])] * len(STORES)
