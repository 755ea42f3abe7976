"""Which keys a report trusts, and what it says about them: a trail re-signed with a key the operator
added to the store passes against the store's own keys (which the report says it trusted, unpinned)
and fails against the pinned ones, on the first page and in the verdict."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sentinel.audit.pins import NOT_PINNED
from sentinel.report.model import FAILED_VERIFICATION, Finding, verdict
from sentinel.report.render import render
from tests.report.conftest import Dataset
from tests.report.dataset import PINS
from tests.support.forgery import forge

SCHEMA = json.loads((Path(__file__).parents[2] / "sentinel" / "report" / "report.schema.json").read_text())
FAILED = "The audit trail FAILED verification"


def _rules(report: dict[str, Any]) -> list[str]:
    return sorted({f["rule"] for f in report["findings"]})


def _first_page(text: str, first_section: str) -> str:
    return text.split(first_section, 1)[0]


def test_a_trail_re_signed_with_a_key_added_to_the_store_fails_only_against_pins(
    clean: Dataset, fresh_copy: Callable[[Dataset], Dataset]
) -> None:
    dataset = fresh_copy(clean)
    settings = dataset.settings
    kid = forge(settings.resolve_path(settings.audit.store_path), settings.resolve_path(settings.key_file))

    # Unpinned, the rewrite is invisible, and the report says what it trusted.
    unpinned = dataset.configure(pinned_keys=None).report()
    jsonschema.validate(unpinned, SCHEMA)
    assert unpinned["integrity"]["ok"] is True and unpinned["summary"]["trail_verified"] is True
    assert _rules(unpinned) == ["integrity.keys_not_pinned"]
    (warning,) = unpinned["findings"]
    assert warning["severity"] == "medium" and NOT_PINNED in warning["detail"]
    keys = unpinned["integrity"]["keys"]
    assert (keys["pinned"], keys["pin_files"], keys["statement"]) == (False, [], NOT_PINNED)
    assert kid in keys["trusted_kids"]
    assert unpinned["summary"]["verdict"] == "exceptions found"
    markdown = render(unpinned, "md").decode()
    assert NOT_PINNED in markdown and FAILED not in markdown

    # Pinned, the key the store gained is a finding in itself, and so is every checkpoint it signed.
    pinned = dataset.configure(pinned_keys=PINS).report()
    jsonschema.validate(pinned, SCHEMA)
    rules = _rules(pinned)
    assert "integrity.unpinned_key" in rules and "integrity.unknown_key" in rules
    assert "integrity.keys_not_pinned" not in rules
    unpinned_key = next(f for f in pinned["findings"] if f["rule"] == "integrity.unpinned_key")
    assert unpinned_key["severity"] == "high" and unpinned_key["evidence"] == {"kid": kid}
    assert pinned["integrity"]["keys"]["findings"] == [
        {"kind": "unpinned_key", "kid": kid, "detail": unpinned_key["detail"]}
    ]
    assert kid not in pinned["integrity"]["keys"]["trusted_kids"]
    assert kid in pinned["integrity"]["keys"]["stored_signing_kids"]
    integrity_findings = [f for f in pinned["findings"] if f["section"] == "integrity"]
    assert pinned["summary"]["integrity_findings"] == len(integrity_findings)
    assert pinned["summary"]["verdict"] == FAILED_VERIFICATION and pinned["summary"]["trail_verified"] is False
    assert pinned["integrity"]["ok"] is False

    statement = f"{FAILED}: {len(integrity_findings)} finding(s); the figures below may not reflect what was recorded"
    assert statement in _first_page(render(pinned, "md").decode(), "## 1. Exceptions")
    html = _first_page(render(pinned, "html").decode(), '<h2 id="findings">')
    assert statement in html and FAILED_VERIFICATION in html


def test_a_stored_key_that_differs_from_its_pin_is_a_finding(
    clean: Dataset, fresh_copy: Callable[[Dataset], Dataset]
) -> None:
    dataset = fresh_copy(clean)
    pins = dataset.settings.data_dir / PINS
    (kid,) = [line.split()[0] for line in pins.read_text().splitlines() if not line.startswith("#")]
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    (dataset.settings.data_dir / "other-pins.txt").write_text(f"{kid} {base64.b64encode(other).decode()}\n")
    report = dataset.configure(pinned_keys="other-pins.txt").report()
    jsonschema.validate(report, SCHEMA)
    mismatch = next(f for f in report["findings"] if f["rule"] == "integrity.key_mismatch")
    assert mismatch["evidence"] == {"kid": kid}
    assert "integrity.bad_signature" in _rules(report)  # checked with the pinned key, not the stored one
    assert report["summary"]["verdict"] == FAILED_VERIFICATION


def test_the_pdf_says_so_on_its_first_page(planted: Dataset, tmp_path: Path) -> None:
    """The planted dataset has a tampered record: the PDF's first page says the trail failed."""
    (tmp_path / "report.pdf").write_bytes(planted.issue("pdf").body)
    first = subprocess.run(
        ["pdftotext", "-f", "1", "-l", "1", str(tmp_path / "report.pdf"), "-"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"{FAILED}: 1 finding(s)" in " ".join(first.split())
    assert FAILED_VERIFICATION in first


def test_no_exceptions_is_never_the_verdict_of_a_trail_that_failed_verification() -> None:
    info = Finding("backups", "backup.none", "info", "t", "d")
    assert verdict([], trail_verified=True) == "no exceptions found"
    assert verdict([info], trail_verified=True) == "exceptions found"
    assert verdict([], trail_verified=False) == FAILED_VERIFICATION
    assert verdict([info], trail_verified=False) == FAILED_VERIFICATION
