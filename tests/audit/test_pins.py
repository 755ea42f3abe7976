"""Pin files and the keys a verification trusts: what `keys show --public` writes reads back; anything
else is refused naming the file and line; pinned, every signing key in the store must be pinned."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sentinel.audit.keyring import WrappedKey
from sentinel.audit.pins import NOT_PINNED, PinFileError, Pins, configured_pins, pin_file_text, trusted_keys
from sentinel.audit.verify import verify
from sentinel.config import load_settings
from tests.audit.support import running_trail
from tests.support.forgery import forge


def _public() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def test_a_pin_file_reads_back_with_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "pins.txt"
    key = _public()
    path.write_text(f"# comment\n\nsk-1 {key}\n  sk-2   {_public()}  \n")
    pins = Pins.read([path])
    assert sorted(pins.keys) == ["sk-1", "sk-2"]
    (pin_file,) = pins.files
    assert pin_file.path == path.absolute() and pin_file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert pins.raw["sk-1"] == base64.b64decode(key)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("sk-1\n", "pins.txt:1 is not a pinned key line (expected `KID BASE64`)"),
        ("# ok\nsk-1 not-base64!\n", "pins.txt:2 is not a pinned key line"),
        ("sk-1 " + base64.b64encode(b"short").decode() + "\n", "pins.txt:1 is not a pinned key line"),
        ("Key-encryption keys in /x: kek-1 (active)\n", "pins.txt:1 is not a pinned key line"),
        ("# nothing pinned\n", "no pinned keys in"),
        (f"sk-1 {_public()}\nsk-1 {_public()}\n", "pins.txt:2 pins sk-1 a second time, to a different key"),
    ],
)
def test_anything_else_is_refused_naming_the_file_and_line(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "pins.txt"
    path.write_text(text)
    with pytest.raises(PinFileError, match="pins.txt") as caught:
        Pins.read([path])
    assert error in str(caught.value)


def test_an_unreadable_pin_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PinFileError, match="cannot read pin file .*missing.txt"):
        Pins.read([tmp_path / "missing.txt"])
    with pytest.raises(PinFileError, match="cannot read pin file"):
        Pins.read([tmp_path])


async def test_pinned_every_signing_key_in_the_store_must_be_pinned(tmp_path: Path) -> None:
    async with running_trail(tmp_path, checkpoint_every=5) as trail:
        await trail.write(10)
        await trail.ship()
        pins_path = tmp_path / "pins.txt"
        pins_path.write_text(pin_file_text(trail.keyring.all_keys()))
        pins = Pins.read([pins_path])
        (kid,) = pins.keys

        stored = await trusted_keys(trail.store, None)
        assert (stored.pinned, stored.statement(), sorted(stored.keys), stored.findings) == (
            False,
            NOT_PINNED,
            [kid],
            [],
        )
        pinned = await trusted_keys(trail.store, pins)
        assert pinned.findings == [] and pinned.statement().startswith(
            f"verified against the keys pinned in {pins_path}"
        )
        assert (await verify(trail.store, pinned)).ok

        other = tmp_path / "other.txt"
        other.write_text(f"{kid} {_public()}\n")
        mismatch = await trusted_keys(trail.store, Pins.read([other]))
        assert [(f.kind, f.kid) for f in mismatch.findings] == [("key_mismatch", kid)]
        assert {f.kind for f in (await verify(trail.store, mismatch)).findings} == {"bad_signature"}

        forged = forge(trail.store.path, tmp_path / "keys" / "kek.key")
        assert (await verify(trail.store, await trusted_keys(trail.store, None))).ok  # the blind spot
        found = await trusted_keys(trail.store, pins)
        assert [(f.kind, f.kid) for f in found.findings] == [("unpinned_key", forged)]
        assert found.to_dict()["stored_signing_kids"] == sorted([kid, forged])
        assert {f.kind for f in (await verify(trail.store, found)).findings} == {"unknown_key"}


def test_the_setting_comes_from_env_and_its_errors_name_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_AUDIT_PINNED_KEYS", "pins.txt")
    settings = load_settings(data_dir=tmp_path)
    assert settings.audit.pinned_keys == Path("pins.txt")
    with pytest.raises(PinFileError, match=r"^audit.pinned_keys \(env SENTINEL_AUDIT_PINNED_KEYS\): cannot read"):
        configured_pins(settings)
    (tmp_path / "pins.txt").write_text(f"sk-1 {_public()}\n")
    pins = configured_pins(settings)  # relative to the data directory
    assert pins is not None and pins.files[0].path == tmp_path / "pins.txt"
    monkeypatch.delenv("SENTINEL_AUDIT_PINNED_KEYS")
    assert configured_pins(load_settings(data_dir=tmp_path)) is None


def test_the_note_verifier_lines_give_the_auditors_log_origin(tmp_path: Path) -> None:
    """`keys show --public` writes a `# note-verifier:` line per chain: the origin they name is the one
    verification holds the trail to, whatever audit.log_origin the operator sets later."""
    key = Ed25519PrivateKey.generate().public_key()
    raw = base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    wrapped = WrappedKey("sk-1", "signing", "kek-1", "x", 0.0, raw)
    (pins := tmp_path / "pins.txt").write_text(
        pin_file_text([wrapped], ["hospital.example/audit/node-a", "hospital.example/audit/node-b"])
    )
    read = Pins.read([pins])
    assert read.log_origin == "hospital.example/audit"
    assert read.files[0].origins == {"hospital.example/audit/node-a", "hospital.example/audit/node-b"}
    (mixed := tmp_path / "mixed.txt").write_text(pin_file_text([wrapped], ["a/audit/node-a", "b/audit/node-a"]))
    with pytest.raises(PinFileError, match="several log origins"):
        _ = Pins.read([mixed]).log_origin
    (bare := tmp_path / "bare.txt").write_text(pin_file_text([wrapped]))
    assert Pins.read([bare]).log_origin is None
    (broken := tmp_path / "broken.txt").write_text(pin_file_text([wrapped]) + "# note-verifier: not+a+key\n")
    with pytest.raises(PinFileError, match="broken.txt:.*not a note verifier key line"):
        Pins.read([broken])
