"""The report as OSCAL assessment results, validated by a maintained OSCAL tool: compliance-trestle's
own command (`trestle validate`, in a `trestle init` workspace) accepts the document, and its model
reads back the observations (evidence numbers), the findings (severity, rule, related controls, state)
and the controls reviewed. A broken document is rejected by the same command, so the check can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from trestle.oscal.assessment_results import AssessmentResults

from sentinel.report.oscal import control_id
from tests.report.conftest import Dataset

TRESTLE = [sys.executable, "-c", "from trestle.cli import run; run()"]


def trestle(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([*TRESTLE, *args], cwd=workspace, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trestle")
    made = trestle(root, "init")
    assert made.returncode == 0, made.stdout + made.stderr
    return root


def validate(workspace: Path, name: str, document: bytes) -> subprocess.CompletedProcess[str]:
    path = workspace / "assessment-results" / name / "assessment-results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(document)
    return trestle(workspace, "validate", "-f", str(path.relative_to(workspace)))


def test_control_ids_are_oscal_tokens() -> None:
    assert control_id("45 CFR 164.312(b)") == "hipaa-164.312.b"
    assert control_id("45 CFR 164.308(a)(7)") == "hipaa-164.308.a.7"
    assert control_id("45 CFR 164.308(a)(1)(ii)(D)") == "hipaa-164.308.a.1.ii.D"


def test_planted_report_as_oscal_passes_trestle(planted: Dataset, workspace: Path) -> None:
    report, (issued,) = planted.issue_all(("oscal",))
    result = validate(workspace, "planted", issued.body)
    assert result.returncode == 0 and "VALID" in result.stdout, result.stdout + result.stderr

    model = AssessmentResults.oscal_read(workspace / "assessment-results" / "planted" / "assessment-results.json")
    assert model is not None
    (result_,) = model.results
    reviewed = {c.control_id for c in result_.reviewed_controls.control_selections[0].include_controls or []}
    assert {"hipaa-164.312.b", "hipaa-164.312.c.1", "hipaa-164.308.a.7", "hipaa-164.312.e.1"} <= reviewed

    def props(item: Any) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in item.props or []:
            out.setdefault(p.name, []).append(p.value)
        return out

    observations = {props(o)["section"][0]: props(o) for o in result_.observations or []}
    assert observations["activity"]["totals.calls"] == [str(report["activity"]["totals"]["calls"])]
    assert observations["integrity"]["records_checked"] == [str(report["integrity"]["records_checked"])]
    assert observations["backups"]["control"] == ["hipaa-164.308.a.7"]

    def state(finding: Any) -> str:
        return str(getattr(finding.target.status.state, "value", finding.target.status.state))

    failed = [f for f in result_.findings or [] if state(f) == "not-satisfied"]
    assert sorted((props(f)["rule"][0], props(f)["severity"][0]) for f in failed) == sorted(
        (f["rule"], f["severity"]) for f in report["findings"]
    )
    modified = next(f for f in failed if props(f)["rule"] == ["integrity.modified"])
    assert modified.target.target_id == "hipaa-164.312.c.1"
    assert props(modified)["related-control"] == ["hipaa-164.312.c.1", "hipaa-164.312.b"]
    assert modified.related_observations and str(modified.related_observations[0].observation_uuid) in {
        str(o.uuid) for o in result_.observations or []
    }
    assert report["summary"]["verdict"] == "audit trail failed verification"
    assert model.metadata.props and {p.value for p in model.metadata.props} >= {report["report_id"]}


def test_a_clean_report_satisfies_every_control(clean: Dataset, workspace: Path) -> None:
    document = json.loads(clean.issue("oscal").body)
    assert validate(workspace, "clean", json.dumps(document).encode()).returncode == 0
    findings = document["assessment-results"]["results"][0]["findings"]
    assert {f["target"]["status"]["state"] for f in findings} == {"satisfied"}
    assert {f["target"]["target-id"] for f in findings} == {
        control_id(s["citation"]) for s in clean.report()["standards"]
    }


def test_trestle_rejects_a_broken_document(clean: Dataset, workspace: Path) -> None:
    document = json.loads(clean.issue("oscal").body)
    document["assessment-results"]["results"][0]["findings"][0]["target"]["status"]["state"] = "fine"
    result = validate(workspace, "broken", json.dumps(document).encode())
    assert "INVALID" in result.stdout + result.stderr
