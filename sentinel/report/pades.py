"""PAdES signatures on PDF reports (pyHanko): a PDF reader shows who signed the report and that it is
unchanged, in addition to the detached signature and the `report_issued` record.

The signing key is the audit trail's Ed25519 checkpoint key (`sk-…`), the one auditors already pin. A
PDF signature needs an X.509 certificate: each signing makes a self-signed certificate for that key,
naming the key id, valid from an hour before the signing for 10 years (a PDF is read long after it is
issued). Its public key is the pinned key, so an auditor trusts the certificate by comparing the two
(`sentinel keys show --public`); the evidence bundle ships the certificate too (`bundle.py`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import warnings
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

VALIDITY = dt.timedelta(days=3653)
FIELD = "SentinelReport"


def certificate(kid: str, key: Ed25519PrivateKey, *, now: dt.datetime | None = None) -> x509.Certificate:
    """A self-signed certificate for the trail's signing key `kid` (serial derived from the public key)."""
    now = now or dt.datetime.now(dt.UTC)
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"Sentinel audit trail signing key {kid}"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Sentinel compliance reports"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(int.from_bytes(hashlib.sha256(raw).digest()[:16], "big") >> 1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,  # non-repudiation: what PDF signature validators expect of a signer
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, None)
    )


def sign_pdf(pdf: bytes, kid: str, key: Ed25519PrivateKey, report: dict[str, Any]) -> bytes:
    """`pdf` with an invisible PAdES baseline signature (B-B) by the trail's signing key."""
    from asn1crypto import keys as asn1_keys
    from asn1crypto import x509 as asn1_x509
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    with warnings.catch_warnings():
        # pyHanko imports cryptography's DSA support at import time (deprecated there); Sentinel signs Ed25519.
        warnings.filterwarnings("ignore", "DSA is deprecated", CryptographyDeprecationWarning)
        from pyhanko.sign import signers
        from pyhanko.sign.fields import SigSeedSubFilter

    cert = certificate(kid, key)
    signer = signers.SimpleSigner(
        signing_cert=asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)),
        signing_key=asn1_keys.PrivateKeyInfo.load(
            key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        ),
        cert_registry=SimpleCertificateStore(),  # type: ignore[no-untyped-call]
    )
    meta = signers.PdfSignatureMetadata(
        field_name=FIELD,
        subfilter=SigSeedSubFilter.PADES,
        reason=f"Sentinel compliance report {report['report_id']} ({report['period']['from']} to "
        f"{report['period']['to']}): {report['summary']['verdict']}",
        location=str(report.get("generated_by") or "Sentinel"),
        name=f"Sentinel audit trail signing key {kid}",
    )
    out = io.BytesIO()
    signers.sign_pdf(IncrementalPdfFileWriter(io.BytesIO(pdf)), meta, signer=signer, output=out)
    return out.getvalue()


def signer_certificate_pem(pdf: bytes) -> bytes | None:
    """The certificate of the (first) signature embedded in a signed PDF, PEM-encoded; None for a PDF
    with no signature inside (signed by a key in a PKCS#11 token: the detached signature only)."""
    from pyhanko.pdf_utils.reader import PdfFileReader

    signatures = PdfFileReader(io.BytesIO(pdf)).embedded_signatures
    if not signatures:
        return None
    signature = signatures[0]
    der = signature.signer_cert.dump()
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
