"""The backup key and sealed objects: file permissions, wrong keys, tampering and what the AAD binds."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from sentinel.backup.chunking import ChunkerParams
from sentinel.backup.jobs import run_backup
from sentinel.backup.keys import BackupKey, KeyFileError, create_key_file, load_key_file
from sentinel.backup.repository import (
    CorruptChunkError,
    CorruptSnapshot,
    Repository,
    WrongKeyError,
    chunk_key,
    snapshot_key,
)
from sentinel.backup.targets.local import LocalTarget
from tests.backup.conftest import MakeContext

PARAMS = ChunkerParams(1024, 4096, 16384)


def test_key_file_is_0600_never_overwritten_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "backup.key"
    key = create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_key_file(path).key_id == key.key_id
    assert key.key_id not in path.read_text() and key.key_id in repr(key)
    with pytest.raises(KeyFileError, match="never overwritten"):
        create_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="accessible by other users"):
        load_key_file(path)
    with pytest.raises(KeyFileError, match="init-key"):
        load_key_file(tmp_path / "missing.key")


def test_chunk_ids_are_keyed_so_they_do_not_reveal_content_hashes() -> None:
    data = b"patient intake note" * 100
    one, two = BackupKey.generate(), BackupKey.generate()
    assert one.chunk_id(data) != hashlib.sha256(data).hexdigest()
    assert one.chunk_id(data) != two.chunk_id(data)
    assert one.chunk_id(data) == one.chunk_id(memoryview(data))


def test_wrong_key_is_a_clear_error_never_garbage(tmp_path: Path) -> None:
    target = LocalTarget(tmp_path / "repo")
    right = BackupKey.generate()
    repo = Repository.open(target, right, create=PARAMS)
    chunk_id = right.chunk_id(b"x" * 100)
    repo.put_chunk(chunk_id, repo.seal_chunk(chunk_id, b"x" * 100))
    wrong = BackupKey.generate()
    with pytest.raises(WrongKeyError) as caught:
        Repository.open(target, wrong)
    assert wrong.key_id in str(caught.value) and right.key_id in str(caught.value)
    # Even bypassing the key check, a wrong key can only fail authentication.
    forced = Repository(target, wrong, repo.config)
    with pytest.raises(CorruptChunkError, match="authentication failed"):
        forced.get_chunk(chunk_id)


def test_sealed_objects_cannot_be_swapped_renamed_or_edited(tmp_path: Path) -> None:
    target = LocalTarget(tmp_path / "repo")
    key = BackupKey.generate()
    repo = Repository.open(target, key, create=PARAMS)
    a, b = b"A" * 5000, b"B" * 5000
    ida, idb = key.chunk_id(a), key.chunk_id(b)
    repo.put_chunk(ida, repo.seal_chunk(ida, a))
    repo.put_chunk(idb, repo.seal_chunk(idb, b))
    assert repo.get_chunk(ida) == a
    # Put A's sealed bytes under B's name: the AAD names the chunk id, so it fails.
    (target.root / chunk_key(idb)).write_bytes((target.root / chunk_key(ida)).read_bytes())
    with pytest.raises(CorruptChunkError, match=idb):
        repo.get_chunk(idb)
    # A chunk from another repository with the same key does not authenticate here either.
    other = Repository.open(LocalTarget(tmp_path / "other"), key, create=PARAMS)
    other.put_chunk(ida, other.seal_chunk(ida, a))
    (target.root / chunk_key(ida)).write_bytes((other.target.root / chunk_key(ida)).read_bytes())  # type: ignore[attr-defined]
    with pytest.raises(CorruptChunkError):
        repo.get_chunk(ida)


def test_manifest_is_encrypted_and_signed(make_context: MakeContext, data_dir: Path) -> None:
    context = make_context(plans={"keys": {"sources": [{"kind": "keys"}]}})
    outcome = run_backup(context, "keys")
    assert outcome.outcome == "success" and outcome.snapshot is not None
    repo = context.repository("keys")
    path = data_dir / "backups" / snapshot_key(outcome.snapshot.id)
    blob = path.read_bytes()
    assert b"audit-data-keys.json" not in blob  # file names are not in clear
    # Auditors can check the signature with the public key in the repository config alone.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(repo.config["public_key"]))
    public.verify(blob[4:68], repo._signed_message(outcome.snapshot.id, blob[68:]))
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptSnapshot, match="signature"):
        repo.load_snapshot(outcome.snapshot.id)
    # Renaming a manifest to another snapshot id breaks the signature (and the AAD) as well.
    path.write_bytes(blob)
    (data_dir / "backups" / snapshot_key("20990101T000000Z-00000000")).write_bytes(blob)
    with pytest.raises(CorruptSnapshot):
        repo.load_snapshot("20990101T000000Z-00000000")
