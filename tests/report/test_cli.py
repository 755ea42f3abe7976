"""`sentinel report` and `sentinel report verify` as operators run them: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.report.conftest import Dataset
from tests.report.dataset import PINS
from tests.support.forgery import forge


def sentinel(dataset: Dataset, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args, "--config", str(dataset.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_then_verify_accepts_the_file_and_rejects_a_modified_one(
    planted: Dataset, fresh_copy: object, tmp_path: Path
) -> None:
    dataset = fresh_copy(planted)  # type: ignore[operator]
    output = tmp_path / "report.md"
    since = str(int(dataset.planted.since))
    made = sentinel(
        dataset, "report", "--from", since, "--to", str(dataset.now), "--format", "md", "--output", str(output)
    )
    assert made.returncode == 0, made.stderr
    assert "recorded as a report_issued event" in made.stderr
    sidecar = json.loads((tmp_path / "report.md.sig.json").read_text())
    assert sidecar["report_id"] in output.read_text()

    good = sentinel(dataset, "report", "verify", str(output))
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(f"OK: {output} is report {sidecar['report_id']} (md,")
    assert "signature by sk-" in good.stdout

    text = output.read_text()
    assert "audit trail failed verification" in text  # the planted dataset's tampered record
    output.write_text(text.replace("audit trail failed verification", "no exceptions found", 1))
    bad = sentinel(dataset, "report", "verify", str(output))
    assert bad.returncode == 1
    assert "the file was modified" in bad.stderr
    assert "no report_issued event in the audit trail names this file's SHA-256" in bad.stderr

    # Without the signature file the trail alone still tells.
    (tmp_path / "report.md.sig.json").unlink()
    alone = sentinel(dataset, "report", "verify", str(output))
    assert alone.returncode == 1 and "no report_issued event" in alone.stderr


def test_a_forged_signature_file_is_rejected(planted: Dataset, fresh_copy: object, tmp_path: Path) -> None:
    dataset = fresh_copy(planted)  # type: ignore[operator]
    output = tmp_path / "r.json"
    assert (
        sentinel(
            dataset, "report", "--from", "5d", "--to", str(dataset.now), "--format", "json", "-o", str(output)
        ).returncode
        == 0
    )
    sidecar_path = tmp_path / "r.json.sig.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["signature"] = sidecar["signature"][::-1]
    sidecar_path.write_text(json.dumps(sidecar))
    forged = sentinel(dataset, "report", "verify", str(output))
    assert forged.returncode == 1
    assert "signature file's signature differs" in forged.stderr


def test_report_to_stdout_and_bad_periods(planted: Dataset, fresh_copy: object) -> None:
    dataset = fresh_copy(planted)  # type: ignore[operator]
    shown = sentinel(dataset, "report", "--from", "4d", "--to", str(dataset.now), "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["schema_version"] == 1
    assert json.loads(shown.stdout)["period"]["since"] == dataset.now - 4 * 86400
    backwards = sentinel(dataset, "report", "--from", "2026-01-02", "--to", "2026-01-01")
    assert backwards.returncode == 2 and "must start before it ends" in backwards.stderr


def test_an_auditor_verifies_a_report_offline_with_pinned_keys(
    planted: Dataset, fresh_copy: object, tmp_path: Path
) -> None:
    """The file and its signature file alone, against a pin file: no audit store within reach."""
    dataset = fresh_copy(planted)  # type: ignore[operator]
    received = tmp_path / "received"
    received.mkdir()
    output = received / "report.json"
    made = sentinel(dataset, "report", "--from", "7d", "--to", str(dataset.now), "--format", "json", "-o", str(output))
    assert made.returncode == 0, made.stderr
    pins = received / "pins.txt"
    shown = sentinel(dataset, "keys", "show", "--public")
    assert shown.returncode == 0, shown.stderr
    pins.write_text(shown.stdout)
    elsewhere = tmp_path / "auditor"  # a data directory with no audit store in it
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}

    def verify_offline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sentinel", "report", "verify", *args, "--data-dir", str(elsewhere)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    good = verify_offline(str(output), "--public-key", str(pins))
    assert good.returncode == 0, good.stderr
    assert "unmodified; signature by pinned key sk-" in good.stdout and "checked offline" in good.stdout

    original = output.read_bytes()
    output.write_bytes(original.replace(b'"calls"', b'"Calls"', 1))
    bad = verify_offline(str(output), "--public-key", str(pins))
    assert bad.returncode == 1 and "the file was modified" in bad.stderr
    output.write_bytes(original)

    sidecar_path = received / "report.json.sig.json"
    sidecar = json.loads(sidecar_path.read_text())
    forged = dict(sidecar, signature=sidecar["signature"][::-1])
    sidecar_path.write_text(json.dumps(forged))
    reversed_signature = verify_offline(str(output), "--public-key", str(pins))
    assert reversed_signature.returncode == 1
    assert "the signature does not verify with the pinned key" in reversed_signature.stderr
    sidecar_path.write_text(json.dumps(sidecar))

    other = received / "other-pins.txt"  # somebody else's key: the signer is not pinned
    other.write_text("sk-someone-else " + "A" * 43 + "=\n")
    unknown = verify_offline(str(output), "--public-key", str(other))
    assert unknown.returncode == 1 and "is not among the pinned keys" in unknown.stderr

    without = verify_offline(str(output))  # no pins and no trail here: a clear error, not a traceback
    assert without.returncode == 2 and "pass --public-key PINS" in without.stderr
    assert "Traceback" not in without.stderr


def test_a_report_names_the_keys_it_trusted_and_a_bad_pin_file_is_wrong_input(
    planted: Dataset, fresh_copy: object, tmp_path: Path
) -> None:
    """`--public-key PINS` over audit.pinned_keys over the store's own keys; a pin file that is not one,
    by flag or by setting, is exit status 2 with a message naming it, for reports and drills alike."""
    dataset = fresh_copy(planted)  # type: ignore[operator]
    pins = dataset.settings.data_dir / PINS  # what the dataset's operator pinned: audit.pinned_keys
    moved = tmp_path / "auditors-pins.txt"
    moved.write_bytes(pins.read_bytes())
    output = tmp_path / "r.json"
    made = sentinel(
        dataset, "report", "--to", str(dataset.now), "--format", "json", "--public-key", str(moved), "-o", str(output)
    )
    assert made.returncode == 0, made.stderr
    keys = json.loads(output.read_text())["integrity"]["keys"]
    assert keys["pinned"] and keys["pin_files"][0]["path"] == str(moved)  # the flag over the setting

    garbage = tmp_path / "not-pins.txt"
    garbage.write_text("Key-encryption keys in /somewhere: kek-1 (active)\n")
    for command in (["report", "--to", str(dataset.now)], ["drill", "run", "audit"]):
        refused = sentinel(dataset, *command, "--public-key", str(garbage))
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert "not-pins.txt:1 is not a pinned key line" in refused.stderr
        assert "keys show --public" in refused.stderr and "Traceback" not in refused.stderr

    broken = dataset.configure(pinned_keys=str(garbage))
    for command in (["report", "--to", str(dataset.now)], ["drill", "run", "audit"], ["audit", "verify"]):
        refused = sentinel(broken, *command)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert "audit.pinned_keys (env SENTINEL_AUDIT_PINNED_KEYS)" in refused.stderr
        assert "not-pins.txt:1 is not a pinned key line" in refused.stderr and "Traceback" not in refused.stderr

    unpinned = dataset.configure(pinned_keys=None)
    made = sentinel(unpinned, "report", "--to", str(dataset.now), "--format", "json", "-o", str(output))
    assert made.returncode == 0, made.stderr
    assert "the checkpoint keys are not pinned" in made.stderr
    assert json.loads(output.read_text())["integrity"]["keys"]["pinned"] is False


def test_audit_verify_against_pins_names_a_key_added_to_the_store(
    clean: Dataset, fresh_copy: object, tmp_path: Path
) -> None:
    dataset = fresh_copy(clean)  # type: ignore[operator]
    settings = dataset.settings
    kid = forge(settings.resolve_path(settings.audit.store_path), settings.resolve_path(settings.key_file))
    blind = sentinel(dataset.configure(pinned_keys=None), "audit", "verify")
    assert blind.returncode == 0, blind.stdout  # the stored keys vouch for the forger's signatures...
    assert "not pinned" in blind.stdout  # ...and the output says that is all it checked against

    pins = settings.data_dir / PINS
    for setting, args in ((None, ["--public-key", str(pins)]), (PINS, [])):  # the flag, then audit.pinned_keys
        found = sentinel(dataset.configure(pinned_keys=setting), "audit", "verify", *args)
        assert found.returncode == 1, found.stdout + found.stderr
        assert "UNPINNED_KEY" in found.stdout and kid in found.stdout and "UNKNOWN_KEY" in found.stdout
    as_json = json.loads(sentinel(dataset, "audit", "verify", "--json").stdout)
    assert as_json["ok"] is False and as_json["keys"]["pinned"] is True
    assert [(f["kind"], f["kid"]) for f in as_json["keys"]["findings"]] == [("unpinned_key", kid)]
