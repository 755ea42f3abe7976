"""A clean period yields no finding, in every format: the verdict, the findings table and the callers'
"new" column say so in JSON, Markdown, HTML and PDF alike (docs/report.md promises it).

The fresh deployment is the case that once failed: its oldest record is the start-up `policy_change`
event, older than the period, and every call lies inside the period; no caller is new *to the
store's calls*, so none may be flagged `anomaly.new_caller`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from tests.report.conftest import Dataset
from tests.report.dataset import ALPHA, BETA


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("name", ["clean", "fresh_deployment"])
def test_a_clean_period_has_no_finding_in_any_format(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dataset: Dataset = request.getfixturevalue(name)
    report = orjson.loads(dataset.issue("json").body)
    assert report["findings"] == [], [f["rule"] for f in report["findings"]]
    assert report["summary"]["verdict"] == "no exceptions found"
    assert set(report["summary"]["findings"].values()) == {0}
    assert {c["caller"]: c["new"] for c in report["activity"]["by_caller"]} == {ALPHA: False, BETA: False}

    markdown = dataset.issue("md").body.decode()
    assert "| Verdict | no exceptions found: 0 high, 0 medium, 0 low, 0 info;" in markdown
    assert "No exceptions found in this period." in markdown

    html = dataset.issue("html").body.decode()
    assert '<span class="ok">no exceptions found</span>' in html
    assert "No exceptions found in this period." in html
    assert "<td>new</td>" not in html

    text = pdf_text(dataset.issue("pdf").body, tmp_path)
    assert "no exceptions found" in text and "No exceptions found in this period." in text
    assert "exceptions found:" not in text.replace("no exceptions found:", "")


def test_a_fresh_deployment_is_no_history_for_new_callers(fresh_deployment: Dataset) -> None:
    """Its store's oldest record (the start-up event) predates the period, but no call does."""
    report = fresh_deployment.report()
    span = report["retention"]["store"]
    assert span["oldest_started_at"] >= report["period"]["from"]  # the oldest *interaction*, not the event
    assert not [f for f in report["findings"] if f["rule"] == "anomaly.new_caller"]
