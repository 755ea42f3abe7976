"""A SoftHSM 2 token for the tests of signing in a hardware security module (sentinel/audit/signer.py).

SoftHSM is a real PKCS#11 module (Debian `softhsm2`, OpenDNSSEC's): keys are generated in it and sign
with CKM_EDDSA, as in a hardware token. A process loads a PKCS#11 module once, with the configuration
(`SOFTHSM2_CONF`) it finds then, and sees the tokens that existed at that moment: so one token with
every key pair the tests need is made, in a child process, before anything here loads the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
TOKEN = "sentinel-tests"
PIN = "314159"
SO_PIN = "271828"

_KEYS = r"""
import sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11.util.ec import encode_named_curve_parameters

token = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
params = encode_named_curve_parameters("1.3.101.112")  # Ed25519


def pair(label, extractable=False):
    return session.generate_keypair(
        KeyType.EC_EDWARDS,
        mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
        public_template={Attribute.EC_PARAMS: params, Attribute.LABEL: label},
        private_template={
            Attribute.LABEL: label, Attribute.SENSITIVE: not extractable, Attribute.EXTRACTABLE: extractable
        },
        store=True,
    )


with token.open(user_pin=sys.argv[3], rw=True) as session:
    pair("audit")
    pair("another")
    pair("exportable", extractable=True)
    public_a, _ = pair("half-a")
    _, private_b = pair("half-b")
    public_a[Attribute.LABEL] = "mismatched"  # the public half of one pair, the private half of another
    private_b[Attribute.LABEL] = "mismatched"
    # A key made in software (a copy kept outside) and imported as sensitive and non-extractable.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    outside = Ed25519PrivateKey.generate()
    raw = outside.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = outside.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    session.create_object({
        Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
        Attribute.EC_PARAMS: params, Attribute.VALUE: raw, Attribute.LABEL: "imported", Attribute.TOKEN: True,
        Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.PRIVATE: True,
    })
    session.create_object({
        Attribute.CLASS: pkcs11.ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
        Attribute.EC_PARAMS: params, Attribute.EC_POINT: b"\x04\x20" + public, Attribute.LABEL: "imported",
        Attribute.TOKEN: True, Attribute.VERIFY: True,
    })
"""


@dataclass(frozen=True)
class Hsm:
    module: Path
    token: str
    pin: str
    conf: Path

    def settings(self, key: str = "audit", **overrides: object) -> dict[str, object]:
        return {"module": str(self.module), "token_label": self.token, "key_label": key, "pin": self.pin} | overrides


def make_token(directory: Path) -> Hsm:
    """A token in `directory` with the key pairs `audit`, `another`, `exportable` (extractable, not
    sensitive), `mismatched` (halves of two pairs) and `imported` (made in software, imported as
    sensitive and non-extractable); sets SOFTHSM2_CONF for this process."""
    if shutil.which("softhsm2-util") is None or not MODULE.is_file():
        raise RuntimeError("the HSM tests need SoftHSM 2: run scripts/install-system-deps")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        [sys.executable, "-c", _KEYS, str(MODULE), TOKEN, PIN], env=env, check=True, capture_output=True, timeout=60
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return Hsm(MODULE, TOKEN, PIN, conf)
