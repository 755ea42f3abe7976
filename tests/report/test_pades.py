"""A PDF report signed the way PDF readers check (PAdES), validated by pyHanko's validator (not code
written here): intact, covering the whole file, by a certificate whose key is the pinned checkpoint key
named in it. Changing a byte or appending a revision is caught by the same validator, and the detached
signature still covers the file as handed out."""

from __future__ import annotations

import io
import warnings

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko_certvalidator import ValidationContext

from sentinel.audit.pins import configured_pins
from sentinel.report.signing import Issued, verify_offline
from tests.report.conftest import Dataset

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "DSA is deprecated", CryptographyDeprecationWarning)
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.errors import SignatureValidationError
    from pyhanko.sign.validation.status import PdfSignatureStatus, SignatureCoverageLevel


@pytest.fixture(scope="module")
def issued(clean: Dataset) -> Issued:
    _, (pdf,) = clean.issue_all(("pdf",))
    return pdf


def validate(pdf: bytes, trust: asn1_x509.Certificate | None = None) -> PdfSignatureStatus:
    (signature,) = PdfFileReader(io.BytesIO(pdf)).embedded_signatures
    roots = [trust or signature.signer_cert]
    return validate_pdf_signature(signature, ValidationContext(trust_roots=roots))


def test_the_pdf_signature_is_valid_and_names_the_pinned_key(issued: Issued, clean: Dataset) -> None:
    pins = configured_pins(clean.settings)
    assert pins is not None
    (signature,) = PdfFileReader(io.BytesIO(issued.body)).embedded_signatures
    cert = signature.signer_cert
    # The auditor trusts the certificate because its key is the one pinned under the key id it names.
    assert (
        cert.public_key.dump()
        == asn1_x509.PublicKeyInfo.load(
            pins.keys[issued.kid].public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ).dump()
    )
    assert issued.kid in cert.subject.human_friendly
    status = validate(issued.body, trust=cert)
    assert status.intact and status.valid and status.trusted, status.pretty_print_details()
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    assert status.bottom_line
    assert signature.sig_object["/Reason"].startswith(f"Sentinel compliance report {issued.report_id}")
    # The detached signature covers the file as handed out, PAdES signature included.
    verdict = verify_offline(
        pins.keys.get, issued.body, {"sha256": issued.sha256, "kid": issued.kid, "signature": issued.signature}
    )
    assert verdict.ok, verdict.problems


def test_a_changed_byte_breaks_the_pdf_signature(issued: Issued) -> None:
    (signature,) = PdfFileReader(io.BytesIO(issued.body)).embedded_signatures
    start, length = signature.byte_range[0], signature.byte_range[1]
    at = start + length // 2
    body = bytearray(issued.body)
    body[at] ^= 0x01
    try:
        status = validate(bytes(body))
    except (SignatureValidationError, ValueError):
        return  # refused outright
    assert not status.intact and not status.bottom_line


def test_a_revision_appended_after_signing_is_visible(issued: Issued) -> None:
    writer = IncrementalPdfFileWriter(io.BytesIO(issued.body))
    writer.root[pdf_name("/Lang")] = pdf_name("/fr")  # an edit in a later revision
    writer.update_root()
    out = io.BytesIO()
    writer.write(out)
    status = validate(out.getvalue())
    assert status.intact  # what was signed is untouched...
    assert status.coverage != SignatureCoverageLevel.ENTIRE_FILE  # ...but the file has more than that
