"""`sentinel audit checkpoint`, `prove` and `consistency` on a real trail, as an auditor runs them: the
proofs they print hold by Sentinel's own verifier and by Go's x/mod sumdb (tests/interop/tlogcheck),
with the verifier key `sentinel keys show --public` publishes; a record changed in the store fails its
proof; without the writer's tiles the tree is rebuilt from the store and gives the same proofs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from sentinel.audit.note import Verifier, open_checkpoint
from sentinel.audit.pins import Pins, note_verifiers, trusted_keys
from sentinel.audit.proofs import ChainProofs, ProofMismatch, SpoolTiles, rebuild_tiles, tiles_read
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.audit.tiles import tiles_of
from sentinel.audit.tlog import inclusion_proof, leaf_hash, tree_hash, verify_consistency, verify_inclusion
from tests.audit.support import running_trail

INSTANCE = "node-a"
RECORDS = 300
EVERY = 7
NEWEST = 295  # checkpoints at seq 1, 8, 15, ... 295: the first record, then every 7
ORIGIN = f"sentinel/audit/{INSTANCE}"


def sentinel(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def ok(data_dir: Path, *args: str) -> str:
    run = sentinel(data_dir, *args)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory as `sentinel serve` leaves it: its spool (with tiles) and embedded store hold a
    chain of 300 records, a checkpoint with a signed note every 7, shipped."""
    data = tmp_path_factory.mktemp("data")

    async def write() -> None:
        async with running_trail(data / "audit", checkpoint_every=EVERY, instance=INSTANCE) as t:
            await t.write(RECORDS)
            await t.ship()

    asyncio.run(write())
    (data / "instance-id").write_text(INSTANCE + "\n")
    return data


@pytest.fixture
def copy(data_dir: Path, tmp_path: Path) -> Path:
    """A copy of the data directory to tamper with."""
    return Path(shutil.copytree(data_dir, tmp_path / "data"))


@pytest.fixture(scope="module")
def pin_file(data_dir: Path) -> str:
    return ok(data_dir, "keys", "show", "--public")


@pytest.fixture(scope="module")
def vkey(pin_file: str) -> str:
    (line,) = [line for line in pin_file.splitlines() if line.startswith("# note-verifier: ")]
    return line.removeprefix("# note-verifier: ")


def sql(path: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(statement, params).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


def stored_records(data_dir: Path) -> list[bytes]:
    rows = sql(
        data_dir / "audit" / "store.db",
        "SELECT CAST(body AS BLOB) FROM records WHERE instance = ? ORDER BY seq",
        (INSTANCE,),
    )
    return [body for (body,) in rows]


def tlogcheck_verdict(
    tlogcheck: Path, tmp_path: Path, doc: dict[str, Any], vkey: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"proof-{len(list(tmp_path.glob('proof-*.json')))}.json"
    path.write_text(json.dumps(doc))
    return subprocess.run([str(tlogcheck), "-vkey", vkey, str(path)], capture_output=True, text=True, timeout=60)


def test_keys_show_public_is_still_a_pin_file_and_publishes_the_chains_verifier_key(
    data_dir: Path, tmp_path: Path, pin_file: str
) -> None:
    path = tmp_path / "pins.txt"
    path.write_text(pin_file)
    (kid,) = Pins.read([path]).keys
    (verifier,) = note_verifiers(pin_file)
    assert verifier.name == ORIGIN
    # The verifier key is the pinned key, named after the chain.
    assert (
        base64.b64decode(pin_file.split(f"\n{kid} ")[1].split()[0])
        == base64.b64decode(pin_file.split("# note-verifier: ")[1].split("+", 2)[2])[1:]
    )
    assert sentinel(data_dir, "audit", "verify", "--public-key", str(path)).returncode == 0


def test_checkpoint_prints_the_newest_signed_note_as_stored(data_dir: Path, vkey: str) -> None:
    note = ok(data_dir, "audit", "checkpoint")
    (stored,) = sql(
        data_dir / "audit" / "store.db",
        "SELECT body FROM checkpoints WHERE instance = ? AND seq = ?",
        (INSTANCE, NEWEST),
    )
    assert note == orjson.loads(stored[0])["note"]
    checkpoint = open_checkpoint(note, [Verifier.parse(vkey)])
    assert (checkpoint.origin, checkpoint.size) == (ORIGIN, NEWEST)
    assert checkpoint.root == tree_hash([leaf_hash(r) for r in stored_records(data_dir)[:NEWEST]])

    as_json = orjson.loads(ok(data_dir, "audit", "checkpoint", "--json", "--chain", INSTANCE))
    assert as_json == {
        "origin": ORIGIN,
        "size": NEWEST,
        "root": base64.b64encode(checkpoint.root).decode(),
        "note": note,
    }

    missing = sentinel(data_dir, "audit", "checkpoint", "--chain", "node-z")
    assert missing.returncode == 2 and "chain node-z has no checkpoint with a signed tree head" in missing.stderr


def test_a_checkpoint_whose_note_was_altered_is_refused(copy: Path) -> None:
    path = copy / "audit" / "store.db"
    ((body,),) = sql(path, "SELECT body FROM checkpoints WHERE seq = ?", (NEWEST,))
    checkpoint = orjson.loads(body)
    checkpoint["note"] = checkpoint["note"].replace(f"\n{NEWEST}\n", f"\n{NEWEST - 1}\n", 1)
    sql(path, "UPDATE checkpoints SET body = ? WHERE seq = ?", (orjson.dumps(checkpoint).decode(), NEWEST))
    refused = sentinel(copy, "audit", "checkpoint")
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"the signed note of checkpoint {INSTANCE}:{NEWEST:012d} does not verify" in refused.stderr


@pytest.mark.parametrize(
    ("record_id", "seq"),
    [
        (f"{INSTANCE}:000000000001", 1),
        (f"{INSTANCE}:42", 42),
        ("interaction-256", 256),
        (f"{INSTANCE}:{NEWEST}", NEWEST),
    ],
)
def test_prove_prints_a_proof_that_sentinel_and_go_accept(
    data_dir: Path, tmp_path: Path, tlogcheck: Path, vkey: str, record_id: str, seq: int
) -> None:
    doc = orjson.loads(ok(data_dir, "audit", "prove", record_id, "--json"))
    record = stored_records(data_dir)[seq - 1]
    assert set(doc) == {"origin", "leaf_index", "tree_size", "record", "leaf_hash", "proof", "checkpoint"}
    assert (doc["origin"], doc["leaf_index"], doc["tree_size"]) == (ORIGIN, seq - 1, NEWEST)
    assert base64.b64decode(doc["record"]) == record
    assert base64.b64decode(doc["leaf_hash"]) == leaf_hash(record)
    assert doc["checkpoint"] == ok(data_dir, "audit", "checkpoint")

    checkpoint = open_checkpoint(doc["checkpoint"], [Verifier.parse(vkey)])
    proof = [base64.b64decode(h) for h in doc["proof"]]
    assert verify_inclusion(leaf_hash(record), seq - 1, checkpoint.size, proof, checkpoint.root)
    go = tlogcheck_verdict(tlogcheck, tmp_path, doc, vkey)
    assert (go.returncode, go.stdout) == (0, "ok\n"), go.stderr


def test_prove_says_in_words_what_holds(data_dir: Path) -> None:
    said = ok(data_dir, "audit", "prove", f"{INSTANCE}:42")
    assert f"Record {INSTANCE}:000000000042 is leaf 41 of {ORIGIN} at tree size {NEWEST}" in said
    assert "from the writer's tiles" in said


def test_no_proof_for_a_record_no_checkpoint_covers_or_none_at_all(data_dir: Path) -> None:
    uncovered = sentinel(data_dir, "audit", "prove", f"{INSTANCE}:{NEWEST + 1}")
    assert uncovered.returncode == 2 and uncovered.stdout == ""
    assert f"no signed checkpoint of chain {INSTANCE} covers seq {NEWEST + 1} yet" in uncovered.stderr
    unknown = sentinel(data_dir, "audit", "prove", "interaction-9999")
    assert unknown.returncode == 2 and "no audit record interaction-9999" in unknown.stderr


def test_a_record_changed_in_the_store_fails_its_proof(copy: Path) -> None:
    path = copy / "audit" / "store.db"
    ((body,),) = sql(path, "SELECT body FROM records WHERE seq = 100")
    sql(path, "UPDATE records SET body = ? WHERE seq = 100", (body.replace("deepseek-r1", "deepseek-r2"),))
    refused = sentinel(copy, "audit", "prove", f"{INSTANCE}:100", "--json")
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"record {INSTANCE}:000000000100 in the store is not the one the checkpoint at seq {NEWEST} signed" in (
        refused.stderr
    )
    assert "the writer's tiles hold another leaf there" in refused.stderr
    assert sentinel(copy, "audit", "prove", f"{INSTANCE}:99").returncode == 0  # the others still prove

    # Without the writer's tiles the tree is the store's, which no longer has the signed root.
    sql(copy / "audit" / "spool.db", "DELETE FROM tiles")
    rebuilt = sentinel(copy, "audit", "prove", f"{INSTANCE}:99")
    assert rebuilt.returncode == 1
    assert f"the tree of chain {INSTANCE} computed from the store's records does not have the root" in rebuilt.stderr


def test_without_the_writers_tiles_the_store_gives_the_same_proofs(data_dir: Path, copy: Path) -> None:
    sql(copy / "audit" / "spool.db", "DELETE FROM tiles")
    for args in (("prove", f"{INSTANCE}:200"), ("consistency", "--old", "8"), ("consistency", "--old", "100")):
        rebuilt = sentinel(copy, "audit", *args, "--json")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "rebuilding its Merkle tree from the store's" in rebuilt.stderr
        assert orjson.loads(rebuilt.stdout) == orjson.loads(ok(data_dir, "audit", *args, "--json"))
    said = ok(copy, "audit", "prove", f"{INSTANCE}:200")
    assert "from the tree rebuilt from the store" in said


def test_consistency_between_two_checkpoints_is_accepted_by_sentinel_and_go(
    data_dir: Path, tmp_path: Path, tlogcheck: Path, vkey: str
) -> None:
    doc = orjson.loads(
        ok(data_dir, "audit", "consistency", "--chain", INSTANCE, "--old", "8", "--new", str(NEWEST), "--json")
    )
    verifier = Verifier.parse(vkey)
    old, new = open_checkpoint(doc["old_checkpoint"], [verifier]), open_checkpoint(doc["new_checkpoint"], [verifier])
    assert (doc["origin"], doc["old_size"], doc["new_size"], old.size, new.size) == (ORIGIN, 8, NEWEST, 8, NEWEST)
    assert (base64.b64decode(doc["old_root"]), base64.b64decode(doc["new_root"])) == (old.root, new.root)
    proof = [base64.b64decode(h) for h in doc["proof"]]
    assert verify_consistency(8, NEWEST, old.root, new.root, proof)
    go = tlogcheck_verdict(tlogcheck, tmp_path, doc, vkey)
    assert (go.returncode, go.stdout) == (0, "ok\n"), go.stderr
    # --new defaults to the newest checkpoint
    assert orjson.loads(ok(data_dir, "audit", "consistency", "--old", "8", "--json")) == doc


def test_consistency_from_a_size_without_a_checkpoint_gives_the_computed_root(data_dir: Path) -> None:
    doc = orjson.loads(ok(data_dir, "audit", "consistency", "--old", "100", "--new", "200", "--json"))
    assert "old_checkpoint" not in doc and "new_checkpoint" not in doc
    leaves = [leaf_hash(record) for record in stored_records(data_dir)]
    old_root, new_root = tree_hash(leaves[:100]), tree_hash(leaves[:200])
    assert (base64.b64decode(doc["old_root"]), base64.b64decode(doc["new_root"])) == (old_root, new_root)
    assert verify_consistency(100, 200, old_root, new_root, [base64.b64decode(h) for h in doc["proof"]])
    said = ok(data_dir, "audit", "consistency", "--old", "100", "--new", "200")
    assert "Signed checkpoints at size (none)" in said


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("200", "100", "no consistency proof from size 200 to 100"),
        ("8", "1000", f"chain {INSTANCE} has {RECORDS} records, not 1000"),
    ],
)
def test_consistency_refuses_sizes_out_of_range(data_dir: Path, old: str, new: str, error: str) -> None:
    refused = sentinel(data_dir, "audit", "consistency", "--old", old, "--new", new)
    assert refused.returncode == 2 and error in refused.stderr


def test_the_writers_tiles_and_the_tree_rebuilt_from_the_store_are_alike(data_dir: Path, copy: Path) -> None:
    leaves = [leaf_hash(record) for record in stored_records(data_dir)]
    expected = tiles_of(leaves)
    with SpoolTiles(data_dir / "audit" / "spool.db") as spool:
        assert spool.size() == RECORDS
        assert {key: spool(*key) for key in expected} == expected

    async def rebuild(
        path: Path, size: int, wanted: set[tuple[int, int]] | None = None
    ) -> dict[tuple[int, int], bytes]:
        store = EmbeddedStore(path, read_only=True)
        await store.open()
        try:
            return await rebuild_tiles(store, INSTANCE, size, wanted=wanted)
        finally:
            await store.close()

    store_path = data_dir / "audit" / "store.db"
    assert asyncio.run(rebuild(store_path, RECORDS)) == expected
    assert asyncio.run(rebuild(store_path, 257)) == tiles_of(leaves[:257])
    assert tiles_read(lambda s: inclusion_proof(3, 257, s)) == {(0, 0), (0, 1)}
    wanted = tiles_read(lambda s: inclusion_proof(256, RECORDS, s))
    assert wanted == {(1, 0), (0, 1)}  # the left 256 leaves' root, and leaf 256's neighbours
    assert asyncio.run(rebuild(store_path, RECORDS, wanted)) == {k: v for k, v in expected.items() if k in wanted}

    sql(copy / "audit" / "store.db", "DELETE FROM records WHERE seq = 50")
    with pytest.raises(ProofMismatch, match=f"the store holds no record at seq 50 of chain {INSTANCE}"):
        asyncio.run(rebuild(copy / "audit" / "store.db", RECORDS))


async def test_chain_proofs_serve_the_api_as_they_serve_the_cli(data_dir: Path) -> None:
    store = EmbeddedStore(data_dir / "audit" / "store.db", read_only=True)
    await store.open()
    try:
        chain = ChainProofs(store, INSTANCE, await trusted_keys(store, None), spool=data_dir / "audit" / "spool.db")
        proof = await chain.prove(7)
        assert proof.holds() and chain.source == "tiles" and proof.tree.size == NEWEST
        consistency = await chain.consistency(1)
        assert consistency.holds() and consistency.old_tree is not None and consistency.new_tree is not None
        assert (await chain.newest()).to_dict()["note"] == proof.tree.note
    finally:
        await store.close()
