"""`sentinel report` and `sentinel report verify` as operators run them: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.report.conftest import Dataset


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

    output.write_text(output.read_text().replace("exceptions found", "no exceptions found", 1))
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
