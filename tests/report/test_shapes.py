"""Property-based: over generated datasets (empty, no streams, one call, one minute, a year, many
chains, and what `hypothesis` draws between them) every format renders, JSON validates against its
schema, OSCAL loads in compliance-trestle's model with the same findings, and JSON, Markdown, HTML
and PDF state the same facts: the report id, the period, the verdict,
every finding's rule, the totals, each caller, model and chain, records verified, the error rate.

Kept fast: few drawn examples, small datasets, the report gathered once per dataset and rendered four
ways (issuing re-gathers; rendering is what differs between the forms)."""

from __future__ import annotations

import html
import json
import re
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from trestle.oscal.assessment_results import AssessmentResults

from sentinel.report.render import render
from tests.report.shapes import Shape, build_shape

SCHEMA = json.loads((Path(__file__).parents[2] / "sentinel" / "report" / "report.schema.json").read_text())
DAY = 86400.0

shapes = st.builds(
    Shape,
    seconds=st.sampled_from([60.0, 3600.0, DAY, 3 * DAY + 1, 30 * DAY, 365 * DAY]),
    calls=st.integers(0, 30),
    streamed=st.booleans(),
    failing_every=st.integers(0, 4),
    callers=st.integers(1, 4),
    chains=st.integers(1, 3),
)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _squash(text: str) -> str:
    """Whitespace removed: table cells wrap differently in each form (PDF lines, Markdown cells)."""
    return re.sub(r"\s+", "", text)


def facts(report: dict[str, Any]) -> list[str]:
    """What every form must state, as it states it (numbers with thousands separators)."""
    summary, totals = report["summary"], report["activity"]["totals"]
    out = [
        report["report_id"],
        report["period"]["from"],
        report["period"]["to"],
        summary["verdict"],
        f"{summary['calls']:,} calls",
        f"{totals['failed']:,} failed",
        f"{report['integrity']['records_checked']:,} records",
        f"{report['service_levels']['error_rate']['value'] * 100:.2f} %",
    ]
    out += sorted({f["rule"] for f in report["findings"]})
    out += [c["caller"] for c in report["activity"]["by_caller"]]
    out += [m["name"] for m in report["activity"]["by_model"]]
    out += [i["instance"] for i in report["integrity"]["instances"]]
    return out


def forms(report: dict[str, Any], workdir: Path) -> dict[str, str]:
    """Each form's text, as a reader sees it."""
    text = _Text()
    text.feed(render(report, "html").decode())
    pdf = workdir / "report.pdf"
    pdf.write_bytes(render(report, "pdf"))
    pdf_text = subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    return {
        "json": render(report, "json").decode(),
        "oscal": render(report, "oscal").decode(),
        "md": render(report, "md").decode().replace("\\|", "|"),
        "html": html.unescape("".join(text.parts)),
        "pdf": pdf_text,
    }


@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(shape=shapes)
@example(shape=Shape(3600.0, 0))  # an empty period
@example(shape=Shape(DAY, 12, streamed=False, failing_every=3))  # no streamed calls
@example(shape=Shape(DAY, 1))  # one call
@example(shape=Shape(60.0, 5, failing_every=2, callers=2))  # one minute
@example(shape=Shape(365 * DAY, 24, callers=3))  # a year
@example(shape=Shape(7 * DAY, 30, chains=4, callers=4, failing_every=4))  # many chains
def test_every_form_renders_and_states_the_same_facts(shape: Shape) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_shape(Path(tmp) / "data", shape)
        report = dataset.report()
        jsonschema.validate(report, SCHEMA)
        assert report["summary"]["calls"] == shape.calls
        # Chain 0 records the start-up event; the others only calls (dealt round-robin).
        assert len(report["integrity"]["instances"]) == max(1, min(shape.chains, shape.calls))
        assert report["integrity"]["ok"] is True
        texts = forms(report, Path(tmp))
        assert json.loads(texts.pop("json")) == report  # the canonical form: the facts themselves
        oscal = AssessmentResults.model_validate(json.loads(texts.pop("oscal"))["assessment-results"])
        (result,) = oscal.results
        rules = [p.value for f in result.findings or [] for p in f.props or [] if p.name == "rule"]
        assert sorted(rules) == sorted(f["rule"] for f in report["findings"])
        for name, text in texts.items():
            squashed = _squash(text)
            missing = [fact for fact in facts(report) if _squash(fact) not in squashed]
            assert not missing, (name, missing)


def test_html_and_pdf_are_issued_for_an_empty_period_and_one_without_streams() -> None:
    """Issued through the real path (gather, render, PAdES, sign, record): these once crashed with
    `'dict object' has no attribute 'ttft'` and exit status 1."""
    for shape in (Shape(3600.0, 0), Shape(DAY, 6, streamed=False)):
        with tempfile.TemporaryDirectory() as tmp:
            dataset = build_shape(Path(tmp) / "data", shape)
            report, (html_form, pdf_form) = dataset.issue_all(("html", "pdf"))
            assert report["service_levels"]["ttft_histogram"] == []
            assert html_form.body.count(b"data:image/svg+xml;base64,") == 2  # activity and error rate, no TTFT
            assert pdf_form.body.startswith(b"%PDF-") and b"/ByteRange" in pdf_form.body
