"""Checkpoints signed by an Ed25519 key in a PKCS#11 token (sentinel/audit/signer.py), against a real
SoftHSM 2 token (tests/support/hsm.py). The operator who holds the data directory and the KEK file
gets no signing key from them: there is none to unwrap."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pkcs11
import pytest
import yaml
from pkcs11 import Attribute, KeyType, ObjectClass

from sentinel.audit.kek import KeyUnavailable
from sentinel.audit.keyring import EXTERNAL, SIGNING, KeyRing, WrappedKey
from sentinel.audit.note import Verifier, open_checkpoint, origin_of
from sentinel.audit.settings import Pkcs11SignerSettings
from sentinel.audit.signer import Pkcs11Signer, SignerUnavailable, external_kid
from tests.audit.support import running_trail
from tests.support.hsm import Hsm


def settings(hsm: Hsm, key: str = "audit", **overrides: object) -> Pkcs11SignerSettings:
    return Pkcs11SignerSettings.model_validate(hsm.settings(key, **overrides))


async def test_a_trail_signs_every_checkpoint_in_the_token(hsm: Hsm, tmp_path: Path) -> None:
    signer = Pkcs11Signer.open(settings(hsm))
    try:
        async with running_trail(tmp_path, checkpoint_every=7) as trail:
            kid = trail.keyring.use_signer(signer)
            await trail.write(30)
            await trail.ship()
            report = await trail.verify()
            assert report.ok, report.findings
            assert report.instances[0].checkpoints_checked >= 4

            checkpoints = await trail.store.checkpoints("node-a")
            assert {c["kid"] for c in checkpoints if c["seq"] > 1} == {kid} and kid == external_kid(signer.public_key())
            # The C2SP notes open with the token's public key alone.
            verifier = Verifier(origin_of("sentinel/audit", "node-a"), signer.public_key())
            assert all(open_checkpoint(c["note"], [verifier]).size == c["seq"] for c in checkpoints if c["kid"] == kid)
            stored = [k for k in await trail.store.keys() if k.kid == kid]
            assert [(k.purpose, k.kek_id, k.wrapped) for k in stored] == [(SIGNING, EXTERNAL, "")]
    finally:
        signer.close()


async def test_the_holder_of_the_data_dir_and_the_kek_gets_no_signing_key(hsm: Hsm, tmp_path: Path) -> None:
    """What the operator can read: the spool, the store and the KEK file. The token's key is in none of
    them, the ring refuses to hand it out, and the token will not export it."""
    signer = Pkcs11Signer.open(settings(hsm))
    try:
        async with running_trail(tmp_path, checkpoint_every=5) as trail:
            kid = trail.keyring.use_signer(signer)
            await trail.write(10)
            await trail.ship()
            # A ring opened from what is on disk, as the operator would, with the real KEK.
            ring = KeyRing(trail.keyring.keks, trail.spool)
            with pytest.raises(KeyUnavailable, match="held in a PKCS#11 token"):
                ring._unwrapped(kid)
            assert ring.public_key(kid) == signer.public_key()
            # Without the token, the ring will not fall back to a key the KEK unwraps.
            with pytest.raises(KeyUnavailable, match="configure audit.signer"):
                ring.signing_key()
            # Nor can an `external` entry written into the keys table make a data key unreadable.
            data_kid = next(k.kid for k in ring.all_keys() if k.purpose == "data")
            forged = WrappedKey(data_kid, "data", EXTERNAL, "", 0.0, None)
            ring.learn([forged])
            assert ring.aead(data_kid) is not None
        for database in ("spool.db", "store.db"):
            db = sqlite3.connect(tmp_path / database)
            try:
                rows = db.execute("SELECT body FROM keys").fetchall()
            finally:
                db.close()
            hsm_rows = [bytes(body) if isinstance(body, bytes) else body.encode() for (body,) in rows]
            assert any(kid.encode() in body for body in hsm_rows)
            assert all(b'"wrapped":""' in body or kid.encode() not in body for body in hsm_rows)
    finally:
        signer.close()

    token = pkcs11.lib(str(hsm.module)).get_token(token_label=hsm.token)
    with token.open(user_pin=hsm.pin) as session:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC_EDWARDS, label="audit")
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private[Attribute.VALUE]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pin": "000000"}, "the token refused the PIN"),
        ({"token_label": "no-such-token"}, "no such token"),
        ({"key_label": "no-such-key"}, "no Ed25519 key pair with that label"),
        ({"key_label": "exportable"}, "could leave it"),
        ({"key_label": "imported"}, "was not generated in the token"),
        ({"key_label": "mismatched"}, "a test signature did not verify with its public key"),
        ({"module": "/nonexistent/libpkcs11.so"}, "does not exist"),
    ],
)
def test_a_token_that_cannot_sign_safely_is_a_clear_error(hsm: Hsm, overrides: dict[str, object], message: str) -> None:
    key = str(overrides.pop("key_label", "audit"))
    with pytest.raises(SignerUnavailable, match=message) as refused:
        Pkcs11Signer.open(settings(hsm, key, **overrides))
    assert hsm.pin not in str(refused.value) and "000000" not in str(refused.value)


def test_the_pin_comes_from_a_file(hsm: Hsm, tmp_path: Path) -> None:
    (pin_file := tmp_path / "pin").write_text(hsm.pin + "\n")
    configured = Pkcs11SignerSettings.model_validate(hsm.settings() | {"pin": None, "pin_file": str(pin_file)})
    signer = Pkcs11Signer.open(configured)
    try:
        assert signer.public_key().verify(signer.sign(b"x"), b"x") is None
    finally:
        signer.close()
    assert hsm.pin not in repr(configured)


def test_serve_and_the_cli_sign_in_the_token_and_verify(hsm: Hsm, tmp_path: Path) -> None:
    """The CLI's own chain (`sentinel keys rotate` records an event in it) signed in the token, `sentinel
    audit verify` and `sentinel keys show --public` on a data directory configured with audit.signer;
    then a wrong PIN stops the CLI with a message, never a traceback or the PIN."""
    data = tmp_path / "data"
    config = tmp_path / "sentinel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(data),
                "upstream": {"url": "http://127.0.0.1:9"},
                "audit": {"signer": hsm.settings(), "verify_schedule": None, "verify_full_schedule": None},
            }
        )
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sentinel", *args, "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert cli("keys", "init").returncode == 0
    rotated = cli("keys", "rotate")  # an event in the CLI's own chain, its checkpoint signed in the token
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    verified = cli("audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout + verified.stderr
    db = sqlite3.connect(data / "audit" / "store.db")
    try:
        kids = {kid for (kid,) in db.execute("SELECT json_extract(body, '$.kid') FROM checkpoints")}
    finally:
        db.close()
    shown = cli("keys", "show", "--public")
    assert shown.returncode == 0, shown.stderr
    signer = Pkcs11Signer.open(settings(hsm))
    try:
        kid, public = external_kid(signer.public_key()), signer.public_key()
    finally:
        signer.close()
    raw = base64.b64encode(public.public_bytes_raw()).decode()
    assert kids == {kid}
    assert kid in shown.stdout and raw in shown.stdout

    config.write_text(config.read_text().replace(hsm.pin, "999999"))
    refused = cli("keys", "rotate")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "the token refused the PIN" in refused.stderr and "999999" not in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_a_checkpoint_signed_by_the_software_key_after_the_token_is_a_finding(hsm: Hsm, tmp_path: Path) -> None:
    """The trail moved to a token; the operator unwraps the software key it used before (pinned, since
    older checkpoints need it) and signs a newer checkpoint with it: named `key_downgrade`. (Re-signing
    every checkpoint with the old key leaves none by the token: the anchors show that one.)"""
    signer = Pkcs11Signer.open(settings(hsm))
    try:
        async with running_trail(tmp_path, checkpoint_every=5) as trail:
            await trail.write(10)
            old_kid, old_key = trail.keyring.signing_key()
            token_kid = trail.keyring.use_signer(signer)
            await trail.write(10, start=11)
            await trail.ship()
            assert (await trail.verify()).ok
            db = sqlite3.connect(tmp_path / "store.db")
            try:
                doc_id, body = db.execute(
                    "SELECT doc_id, body FROM checkpoints WHERE instance = 'node-a' ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                checkpoint = orjson.loads(body)
                assert checkpoint["kid"] == token_kid
                checkpoint["kid"] = old_kid
                checkpoint.pop("signature")
                signed = orjson.dumps(checkpoint, option=orjson.OPT_SORT_KEYS)
                checkpoint["signature"] = base64.b64encode(old_key.sign(signed)).decode()
                forged = orjson.dumps(checkpoint).decode()
                db.execute("UPDATE checkpoints SET body = ? WHERE doc_id = ?", (forged, doc_id))
                db.commit()
            finally:
                db.close()
            findings = (await trail.verify()).findings
            assert ("key_downgrade", checkpoint["seq"]) in {(f.kind, f.seq) for f in findings}
    finally:
        signer.close()
