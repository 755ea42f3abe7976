"""Sentinel's checkpoints and Merkle proofs, checked by an implementation not written here.

Go's `golang.org/x/mod/sumdb/note` and `sumdb/tlog` (the code behind the Go checksum database) are the
reference implementations of C2SP signed notes and RFC 6962 proofs. tests/interop/tlogcheck is a small
Go program on them alone; it reads the JSON that `sentinel audit prove --json` and `sentinel audit
consistency --json` print. Here a real trail's stored records become a log: Go must accept every
honest checkpoint, inclusion and consistency proof, and reject every forgery, and Sentinel's own
verifier (`open_checkpoint`, `verify_inclusion`, `verify_consistency`) must give the same verdict on
each case. Go and x/mod come from Debian (scripts/install-system-deps), built offline in GOPATH mode.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sentinel.audit.note import (
    Checkpoint,
    NoteError,
    Verifier,
    open_checkpoint,
    origin_of,
    sign_checkpoint,
    verifier_key,
)
from sentinel.audit.tlog import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.audit.support import running_trail

INSTANCE = "node-a"
RECORDS = 300
LOG_KEY = "sentinel interop: the log key"
SIZES = (1, 2, 7, 256, 257, 300)
INCLUSIONS = sorted(
    {(i, n) for n in SIZES for i in (0, n // 2, n - 1, *(b for b in (127, 128, 255, 256) if b < n))},
    key=lambda pair: (pair[1], pair[0]),
)
CONSISTENCIES = [
    (1, 1), (1, 2), (1, 300), (2, 7), (2, 256), (7, 256), (7, 257), (7, 300),
    (256, 257), (256, 300), (257, 300), (300, 300),
]  # fmt: skip


@dataclass
class Log:
    """A chain's stored records as a transparency log whose checkpoints `key` signs."""

    origin: str
    records: list[bytes]
    key: Ed25519PrivateKey
    leaves: list[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.leaves = [leaf_hash(record) for record in self.records]

    @property
    def vkey(self) -> str:
        return verifier_key(self.origin, self.key.public_key())

    def subtree(self, level: int, index: int) -> bytes:
        return tree_hash(self.leaves[index << level : (index + 1) << level])

    def checkpoint(self, size: int) -> Checkpoint:
        return Checkpoint(self.origin, size, tree_hash(self.leaves[:size]))

    def signed(self, size: int) -> str:
        return sign_checkpoint(self.checkpoint(size), self.key)

    def inclusion(self, index: int, size: int) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "leaf_index": index,
            "tree_size": size,
            "record": b64(self.records[index]),
            "proof": [b64(h) for h in inclusion_proof(index, size, self.subtree)],
            "checkpoint": self.signed(size),
        }

    def consistency(self, old: int, new: int) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "old_size": old,
            "new_size": new,
            "old_checkpoint": self.signed(old),
            "new_checkpoint": self.signed(new),
            "proof": [b64(h) for h in consistency_proof(old, new, self.subtree)],
        }

    def rewritten(self, index: int) -> Log:
        """The log with record `index` altered, re-rooted and re-signed by the same key: a full rewrite."""
        records = list(self.records)
        records[index] = flip(records[index], len(records[index]) // 2)
        return replace(self, records=records)


def ed25519_key(label: str) -> Ed25519PrivateKey:
    """A fixed key, so that every run signs alike (whether a key's base64 holds a '+' matters to parsers)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flip(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x01
    return bytes(changed)


def flip_hash(encoded: str) -> str:
    return b64(flip(base64.b64decode(encoded), 0))


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    """A real trail of 300 records, written, shipped and read back from the embedded store."""
    tmp = tmp_path_factory.mktemp("trail")

    async def write() -> Path:
        async with running_trail(tmp, instance=INSTANCE) as t:
            await t.write(RECORDS)
            await t.ship()
            return t.store.path

    db = sqlite3.connect(asyncio.run(write()))
    rows = db.execute(
        "SELECT seq, CAST(body AS BLOB) FROM records WHERE instance = ? ORDER BY seq", (INSTANCE,)
    ).fetchall()
    db.close()
    assert [seq for seq, _ in rows] == list(range(1, RECORDS + 1))
    return Log(origin_of("sentinel.test/audit", INSTANCE), [body for _, body in rows], ed25519_key(LOG_KEY))


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    message: str


def go_verdict(tlogcheck: Path, tmp_path: Path, doc: dict[str, Any], vkey: str) -> Verdict:
    path = tmp_path / f"proof-{len(list(tmp_path.glob('proof-*.json')))}.json"
    path.write_text(json.dumps(doc))
    run = subprocess.run([str(tlogcheck), "-vkey", vkey, str(path)], capture_output=True, text=True, timeout=60)
    if run.returncode == 0:
        assert run.stdout == "ok\n", run.stdout
        return Verdict(True, "")
    assert run.returncode == 1, f"tlogcheck could not run ({run.returncode}): {run.stderr}"  # 2: usage
    assert run.stdout == ""
    return Verdict(False, run.stderr)


def sentinel_accepts(doc: dict[str, Any], vkey: str) -> bool:
    """tlogcheck's checks, made with Sentinel's own note and tlog modules."""
    verifier = Verifier.parse(vkey)
    proof = [base64.b64decode(h) for h in doc["proof"]]
    if verifier.name != doc["origin"]:
        return False
    try:
        if "checkpoint" in doc:
            tree = open_checkpoint(doc["checkpoint"], [verifier])
            leaf = leaf_hash(base64.b64decode(doc["record"]))
            return (
                tree.origin == doc["origin"]
                and tree.size == doc["tree_size"]
                and verify_inclusion(leaf, doc["leaf_index"], tree.size, proof, tree.root)
            )
        old = open_checkpoint(doc["old_checkpoint"], [verifier])
        new = open_checkpoint(doc["new_checkpoint"], [verifier])
    except NoteError:
        return False
    return (
        old.origin == new.origin == doc["origin"]
        and (old.size, new.size) == (doc["old_size"], doc["new_size"])
        and verify_consistency(old.size, new.size, old.root, new.root, proof)
    )


def assert_accepted(tlogcheck: Path, tmp_path: Path, doc: dict[str, Any], vkey: str) -> None:
    verdict = go_verdict(tlogcheck, tmp_path, doc, vkey)
    assert verdict.accepted, f"Go rejected it: {verdict.message}"
    assert sentinel_accepts(doc, vkey), "Go accepted it, Sentinel's own verifier did not"


def assert_rejected(tlogcheck: Path, tmp_path: Path, doc: dict[str, Any], vkey: str, reason: str) -> None:
    verdict = go_verdict(tlogcheck, tmp_path, doc, vkey)
    assert not verdict.accepted, "Go accepted a forgery"
    assert reason in verdict.message, verdict.message
    assert not sentinel_accepts(doc, vkey), "Go rejected it, Sentinel's own verifier accepted it"


@pytest.mark.parametrize("size", SIZES)
def test_go_opens_every_signed_checkpoint(log: Log, size: int) -> None:
    # Sentinel's own reading of the note it signed, and the text Go's parser sees, are the same.
    checkpoint = open_checkpoint(log.signed(size), [Verifier.parse(log.vkey)])
    assert checkpoint == log.checkpoint(size)


@pytest.mark.parametrize(("index", "size"), INCLUSIONS, ids=[f"leaf{i}-of-{n}" for i, n in INCLUSIONS])
def test_go_accepts_inclusion_proofs(tlogcheck: Path, tmp_path: Path, log: Log, index: int, size: int) -> None:
    assert_accepted(tlogcheck, tmp_path, log.inclusion(index, size), log.vkey)


@pytest.mark.parametrize(("old", "new"), CONSISTENCIES, ids=[f"{m}-to-{n}" for m, n in CONSISTENCIES])
def test_go_accepts_consistency_proofs(tlogcheck: Path, tmp_path: Path, log: Log, old: int, new: int) -> None:
    assert_accepted(tlogcheck, tmp_path, log.consistency(old, new), log.vkey)


def test_a_changed_record_byte_is_rejected(tlogcheck: Path, tmp_path: Path, log: Log) -> None:
    doc = log.inclusion(128, 300)
    doc["record"] = b64(flip(log.records[128], 10))
    assert_rejected(tlogcheck, tmp_path, doc, log.vkey, "record 128 is not in the tree of size 300")


@pytest.mark.parametrize("at", [0, -1])
def test_a_changed_inclusion_proof_hash_is_rejected(tlogcheck: Path, tmp_path: Path, log: Log, at: int) -> None:
    doc = log.inclusion(200, 257)
    doc["proof"][at] = flip_hash(doc["proof"][at])
    assert_rejected(tlogcheck, tmp_path, doc, log.vkey, "record 200 is not in the tree of size 257")


@pytest.mark.parametrize("at", [0, -1])
def test_a_changed_consistency_proof_hash_is_rejected(tlogcheck: Path, tmp_path: Path, log: Log, at: int) -> None:
    doc = log.consistency(7, 300)
    doc["proof"][at] = flip_hash(doc["proof"][at])
    assert_rejected(tlogcheck, tmp_path, doc, log.vkey, "does not extend the tree of size 7")


def test_a_record_claimed_at_another_index_is_rejected(tlogcheck: Path, tmp_path: Path, log: Log) -> None:
    doc = log.inclusion(100, 300)
    doc["leaf_index"] = 101
    assert_rejected(tlogcheck, tmp_path, doc, log.vkey, "record 101 is not in the tree of size 300")


def test_a_checkpoint_altered_after_signing_is_rejected(tlogcheck: Path, tmp_path: Path, log: Log) -> None:
    # The forged text names a rewritten tree whose proof holds: only the signature gives it away.
    forged = log.rewritten(5)
    doc = forged.inclusion(5, 300)
    honest, forged_text = log.checkpoint(300).text(), forged.checkpoint(300).text()
    doc["checkpoint"] = log.signed(300).replace(honest, forged_text, 1)
    assert doc["checkpoint"].startswith(forged_text)
    assert_rejected(tlogcheck, tmp_path, doc, log.vkey, "invalid signature for key")


def test_a_checkpoint_signed_by_another_key_is_rejected(tlogcheck: Path, tmp_path: Path, log: Log) -> None:
    impostor = replace(log, key=ed25519_key("sentinel interop: a stranger key"))
    assert_rejected(tlogcheck, tmp_path, impostor.inclusion(42, 300), log.vkey, "no verifiable signatures")
    assert_accepted(tlogcheck, tmp_path, impostor.inclusion(42, 300), impostor.vkey)  # the impostor's own key


def test_a_re_signed_rewrite_fails_consistency_with_an_earlier_checkpoint(
    tlogcheck: Path, tmp_path: Path, log: Log
) -> None:
    # An attacker with the signing key rewrites record 100 and re-signs: on its own the rewritten log
    # proves everything, so only a checkpoint taken before (an anchored one) exposes it.
    rewritten = log.rewritten(100)
    assert_accepted(tlogcheck, tmp_path, rewritten.inclusion(100, 300), log.vkey)
    assert_accepted(tlogcheck, tmp_path, rewritten.consistency(257, 300), log.vkey)
    for old, new in [(257, 300), (101, 300), (256, 257)]:
        attempt = rewritten.consistency(old, new)
        attempt["old_checkpoint"] = log.signed(old)
        assert_rejected(tlogcheck, tmp_path, attempt, log.vkey, f"does not extend the tree of size {old}")
        honest_proof = log.consistency(old, new)
        honest_proof["new_checkpoint"] = rewritten.signed(new)
        assert_rejected(tlogcheck, tmp_path, honest_proof, log.vkey, f"does not extend the tree of size {old}")


def test_a_verifier_key_whose_base64_holds_a_plus_reads_alike(tlogcheck: Path, tmp_path: Path, log: Log) -> None:
    # '+' is in base64's alphabet: `name+hash+key` splits at its first two '+' only, as note.NewVerifier does.
    keyed = replace(log, key=ed25519_key("sentinel interop: another key"))
    assert "+" in keyed.vkey.split("+", 2)[2]
    assert_accepted(tlogcheck, tmp_path, keyed.inclusion(7, 300), keyed.vkey)
    assert_accepted(tlogcheck, tmp_path, keyed.consistency(7, 300), keyed.vkey)
