"""Field encryption under envelope keys: round trip, bound ciphertexts, wrong and rotated keys, nonces,
key file permissions."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from sentinel.audit.kek import KeyUnavailable, LocalKeyFile
from sentinel.audit.keyring import KeyRing, WrappedKey
from sentinel.audit.record import INTERACTION, RecordCorrupt, blind_index, decrypt, seal
from sentinel.interaction import Caller, Interaction


class MemoryTable:
    """A KeyTable in memory (the spool's is tested with the trail)."""

    def __init__(self) -> None:
        self.keys: list[WrappedKey] = []

    def load_keys(self) -> list[WrappedKey]:
        return list(self.keys)

    def save_keys(self, keys: list[WrappedKey]) -> None:  # type: ignore[override]
        self.keys.extend(keys)


def interaction(n: int = 1) -> Interaction:
    return Interaction(
        id=f"i-{n}",
        started_at=1_795_000_000.0 + n,
        method="POST",
        path="/v1/chat/completions",
        model_requested="deepseek-r1",
        request_messages=[{"role": "user", "content": f"patient 123-45-6789 asks {n}"}],
        response_text=f"answer {n}",
        reasoning_text="thinking",
        caller=Caller(user="dify-user-7", api_key_id="key-abc"),
        error_message=None,
    )


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing(LocalKeyFile.create(tmp_path / "keys" / "kek.key"), MemoryTable())


def sealed(ring: KeyRing, n: int = 1) -> dict:  # type: ignore[type-arg]
    return seal(ring, instance="i1", seq=n, prev_hash="0" * 64, kind=INTERACTION, interaction=interaction(n))


def test_round_trip_and_metadata_in_clear(ring: KeyRing) -> None:
    doc = sealed(ring)
    content = decrypt(ring, doc)
    assert content["request_messages"][0]["content"] == "patient 123-45-6789 asks 1"
    assert content["response_text"] == "answer 1" and content["caller_user"] == "dify-user-7"
    clear = repr({k: v for k, v in doc.items() if k != "encrypted"})
    for secret in ("123-45-6789", "answer 1", "thinking", "dify-user-7"):
        assert secret not in clear and secret not in repr(doc)
    assert doc["interaction"]["model_requested"] == "deepseek-r1"
    assert doc["interaction"]["caller"]["api_key_id"] == "key-abc"
    assert doc["interaction"]["caller"]["user_index"] == blind_index(ring.index_key(), "dify-user-7")
    blob = doc["encrypted"]["response_text"]
    assert blob["kid"].startswith("dk-") and len(base64.b64decode(blob["nonce"])) == 12


def test_ciphertext_moved_to_another_record_or_field_fails(ring: KeyRing) -> None:
    one, two = sealed(ring, 1), sealed(ring, 2)
    two["encrypted"]["response_text"] = one["encrypted"]["response_text"]
    with pytest.raises(RecordCorrupt, match="field response_text of record i1:000000000002"):
        decrypt(ring, two)
    three = sealed(ring, 3)
    three["encrypted"]["reasoning_text"] = three["encrypted"]["response_text"]
    with pytest.raises(RecordCorrupt, match="reasoning_text"):
        decrypt(ring, three)
    four = sealed(ring, 4)
    raw = bytearray(base64.b64decode(four["encrypted"]["response_text"]["ct"]))
    raw[0] ^= 1
    four["encrypted"]["response_text"]["ct"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(RecordCorrupt):
        decrypt(ring, four)


def test_wrong_or_missing_kek_names_the_key(ring: KeyRing, tmp_path: Path) -> None:
    doc = sealed(ring)
    other = LocalKeyFile.create(tmp_path / "other" / "kek.key")
    with pytest.raises(KeyUnavailable, match=ring.keks.active_id):
        KeyRing(other, keys=ring.all_keys())  # stored keys wrapped by a KEK this file lacks
    forged = LocalKeyFile(other.path, ring.keks.active_id, {ring.keks.active_id: os.urandom(32)})
    wrong = KeyRing(forged, keys=ring.all_keys())  # same KEK id, different material
    with pytest.raises(KeyUnavailable, match="cannot unwrap data key dk-.* with key-encryption key kek-"):
        decrypt(wrong, doc)
    with pytest.raises(KeyUnavailable, match="does not exist"):
        LocalKeyFile.load(tmp_path / "nowhere" / "kek.key")


def test_rotation_keeps_old_records_readable(ring: KeyRing) -> None:
    old = sealed(ring, 1)
    old_kid = old["encrypted"]["response_text"]["kid"]
    new_kid = ring.rotate()
    new = sealed(ring, 2)
    assert new["encrypted"]["response_text"]["kid"] == new_kid != old_kid
    fresh = KeyRing(ring.keks, keys=ring.all_keys())  # e.g. another process reading the store
    assert decrypt(fresh, old)["response_text"] == "answer 1"
    assert decrypt(fresh, new)["response_text"] == "answer 2"


def test_rewrap_under_a_new_kek_then_retire_the_old(ring: KeyRing) -> None:
    doc = sealed(ring)
    old_kek = ring.keks.active_id
    ring.keks.add_new()
    wrappings = ring.rewrap(ring.keks.active())
    assert {w.kek_id for w in wrappings} == {ring.keks.active_id}
    assert ring.unwrappable_without(old_kek) == []
    ring.keks.retire(old_kek)
    reloaded = LocalKeyFile.load(ring.keks.path)
    assert old_kek not in reloaded.key_ids
    table_keys = ring._table.load_keys()  # type: ignore[union-attr]
    assert decrypt(KeyRing(reloaded, keys=table_keys), doc)["response_text"] == "answer 1"
    with pytest.raises(KeyUnavailable, match="active"):
        reloaded.retire(reloaded.active_id)


def test_nonces_never_repeat(ring: KeyRing) -> None:
    nonces = set()
    count = 0
    for n in range(3000):
        for blob in sealed(ring, n)["encrypted"].values():
            nonces.add(blob["nonce"])
            count += 1
    assert count > 10_000 and len(nonces) == count


def test_key_file_permissions(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.key"
    LocalKeyFile.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with pytest.raises(KeyUnavailable, match="already exists"):
        LocalKeyFile.create(path)
    path.chmod(0o644)
    with pytest.raises(KeyUnavailable, match="readable by group or others"):
        LocalKeyFile.load(path)
    path.chmod(0o600)
    path.write_text("not a key file")
    with pytest.raises(KeyUnavailable, match="is not a Sentinel key file"):
        LocalKeyFile.load(path)


def test_blind_index(ring: KeyRing) -> None:
    key = ring.index_key()
    assert blind_index(key, "alice") == blind_index(key, "alice") != blind_index(key, "bob")
    assert blind_index(os.urandom(32), "alice") != blind_index(key, "alice")
    assert len(blind_index(key, "alice")) == 32
