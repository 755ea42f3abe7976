"""`sentinel report --bundle DIR`: an evidence bundle for an auditor who gets files, not access.

One report, gathered once, in every form (each signed and recorded as its own `report_issued` event),
with its detached signatures, the pinned public keys, the signed checkpoints the report relied on, a
SHA256SUMS manifest and a README saying how to check each file offline (its Python snippets run as
they are; a test runs them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from sentinel.report import pades
from sentinel.report.render import EXTENSIONS
from sentinel.report.signing import DOMAIN, Issued

PINS = "pins.txt"
CHECKPOINTS = "checkpoints"


def relied_on(
    checkpoints: Sequence[dict[str, Any]], first_seq: int | None, last_seq: int | None
) -> list[dict[str, Any]]:
    """The checkpoints a verification of records [first_seq, last_seq] rests on: the last one before the
    range (where it starts from), those inside it, and the first one at or after its end (which seals it)."""
    if first_seq is None or last_seq is None:
        return []
    ordered = sorted(checkpoints, key=lambda c: int(c["seq"]))
    before = [c for c in ordered if int(c["seq"]) < first_seq][-1:]
    inside = [c for c in ordered if first_seq <= int(c["seq"]) < last_seq]
    after = [c for c in ordered if int(c["seq"]) >= last_seq][:1]
    return before + inside + after


def write_bundle(
    directory: Path,
    report: dict[str, Any],
    issued: Sequence[Issued],
    *,
    pins_text: str,
    pinned: bool,
    checkpoints: dict[str, list[dict[str, Any]]],
) -> list[Path]:
    """Write the bundle into `directory` (created; it must be empty if it exists); the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty: an evidence bundle goes into a new directory")
    written: list[Path] = []

    def put(name: str, data: bytes) -> None:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)

    for item in issued:
        name = f"report.{EXTENSIONS[item.format]}"
        put(name, item.body)
        put(name + ".sig.json", item.sidecar())
        certificate = pades.signer_certificate_pem(item.body) if item.format == "pdf" else None
        if certificate is not None:
            put(name + ".certificate.pem", certificate)
    put(PINS, pins_text.encode())
    for instance, docs in sorted(checkpoints.items()):
        put(f"{CHECKPOINTS}/{instance}.json", orjson.dumps(docs, option=orjson.OPT_INDENT_2))
    put("README.md", readme(report, issued, pinned=pinned, checkpoints=checkpoints).encode())
    sums = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(directory).as_posix()}\n" for p in written
    )
    put("SHA256SUMS", sums.encode())
    return written


def readme(
    report: dict[str, Any], issued: Sequence[Issued], *, pinned: bool, checkpoints: dict[str, list[dict[str, Any]]]
) -> str:
    files = "\n".join(f"| `report.{EXTENSIONS[i.format]}` | {i.format} | `{i.sha256}` | `{i.kid}` |" for i in issued)
    chains = "\n".join(
        f"| `{CHECKPOINTS}/{instance}.json` | `{instance}` | {', '.join(str(c['seq']) for c in docs) or 'none'} |"
        for instance, docs in sorted(checkpoints.items())
    )
    keys = (
        "`pins.txt` is the pin file the report was verified against (`audit.pinned_keys` or `--public-key`)."
        if pinned
        else "**`pins.txt` was NOT pinned**: it lists the keys the audit store itself holds, so the report "
        "says it trusted them unpinned. Compare it with a copy of `sentinel keys show --public` obtained "
        "from a location you trust before relying on it."
    )
    domain = DOMAIN.decode().encode("unicode_escape").decode()
    period, verdict = report["period"], report["summary"]["verdict"]
    return f"""# Sentinel evidence bundle: compliance report {report["report_id"]}

Period {period["from"]} to {period["to"]} (end exclusive); verdict: **{verdict}**.
Generated {report["generated_at"]} by {report["generated_by"]} with Sentinel {report["sentinel_version"]}.

Everything here can be checked offline, with the files alone. {keys}

| file | form | SHA-256 | signed with |
|---|---|---|---|
{files}

Each `report.*` has a detached signature `report.*.sig.json`; `report.pdf` is also signed inside (PAdES).
`report.json` is the canonical form (schema: `sentinel/report/report.schema.json`); `report.oscal.json` is the
same report as NIST OSCAL assessment results.

## 1. Nothing was changed in transit

    sha256sum -c SHA256SUMS

## 2. Each report file was signed by a pinned key

With Sentinel installed (no access to the deployment needed):

    sentinel report verify report.pdf --public-key pins.txt

Without Sentinel: each signature is Ed25519 over `{domain}` followed by the file's SHA-256 in hex, by the
key `kid` names in `pins.txt` (one `KID BASE64` line per key, raw 32-byte public keys). With Python and
`cryptography`, from this directory:

```python
import base64, hashlib, json, pathlib
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

pins = {{}}
for line in pathlib.Path("pins.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        kid, key = line.split()[:2]
        pins[kid] = Ed25519PublicKey.from_public_bytes(base64.b64decode(key))
for sidecar in sorted(pathlib.Path(".").glob("report.*.sig.json")):
    sig = json.loads(sidecar.read_text())
    body = pathlib.Path(sidecar.name.removesuffix(".sig.json")).read_bytes()
    sha = hashlib.sha256(body).hexdigest()
    assert sha == sig["sha256"], f"{{sidecar}}: the file was modified"
    pins[sig["kid"]].verify(base64.b64decode(sig["signature"]), b"{domain}" + sha.encode())  # raises if not
    print("OK", sidecar.name.removesuffix(".sig.json"), sig["kid"])
```

## 3. The PDF's own signature

Open `report.pdf` in a PDF reader: its signature panel names the signer ("Sentinel audit trail signing key
KID") and says whether the document was changed since it was signed. The certificate
(`report.pdf.certificate.pem`, also embedded in the PDF) is self-signed for the trail's key: trust it only
because its public key is the one `pins.txt` pins. With pyHanko (`pip install pyhanko`):

```python
import base64, io, pathlib
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

pins = {{}}
for line in pathlib.Path("pins.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        kid, key = line.split()[:2]
        pins[base64.b64decode(key)] = kid
cert = x509.load_pem_x509_certificate(pathlib.Path("report.pdf.certificate.pem").read_bytes())
kid = pins[cert.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)]  # KeyError: not a pinned key
(signature,) = PdfFileReader(io.BytesIO(pathlib.Path("report.pdf").read_bytes())).embedded_signatures
trusted = ValidationContext(trust_roots=[asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))])
status = validate_pdf_signature(signature, trusted)
assert status.bottom_line and status.coverage.name == "ENTIRE_FILE", status.pretty_print_details()
print("OK report.pdf signed by", kid)
```

## 4. The OSCAL assessment results

    trestle validate -f assessment-results/NAME/assessment-results.json   # in a `trestle init` workspace

## 5. The checkpoints the report relied on

| file | chain | checkpoint sequence numbers |
|---|---|---|
{chains}

Each checkpoint is signed (Ed25519, key `kid`) over its own JSON without the `signature` member, keys
sorted, no whitespace; its `hash` is the chain's hash at `seq`, its `note` the C2SP signed note of the
Merkle tree (`sentinel audit checkpoint` / `prove` check inclusion against it):

```python
import base64, json, pathlib
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

pins = {{}}
for line in pathlib.Path("pins.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        kid, key = line.split()[:2]
        pins[kid] = Ed25519PublicKey.from_public_bytes(base64.b64decode(key))
for chain in sorted(pathlib.Path("{CHECKPOINTS}").glob("*.json")):
    for checkpoint in json.loads(chain.read_text()):
        signed = {{k: v for k, v in checkpoint.items() if k != "signature"}}
        message = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        pins[checkpoint["kid"]].verify(base64.b64decode(checkpoint["signature"]), message)  # raises if not
        print("OK", chain.stem, checkpoint["seq"], checkpoint["kid"])
```

## 6. With access to the deployment

`sentinel report verify FILE` (or `POST /report/verify` on the admin API, auditor role) also checks that
the audit trail holds an intact `report_issued` record naming the file's SHA-256, and whether a signed
checkpoint seals it.
"""
