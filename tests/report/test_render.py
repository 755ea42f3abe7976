"""The report's forms: a PDF that really renders (pdftoppm to PNG), well-formed HTML with its charts
inline, Markdown with every section, and JSON that validates against the committed schema."""

from __future__ import annotations

import base64
import json
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import jsonschema

from sentinel.report.render import render
from tests.report.conftest import Dataset

SCHEMA = json.loads((Path(__file__).parents[2] / "sentinel" / "report" / "report.schema.json").read_text())
VOID = {"meta", "img", "br", "link", "hr", "input", "col"}


class _Balance(HTMLParser):
    """Fails on a closing tag that does not match the open one (html.parser itself is lenient)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def test_pdf_renders_to_pages(planted: Dataset, tmp_path: Path) -> None:
    pdf = planted.issue("pdf").body
    assert pdf.startswith(b"%PDF-")
    (tmp_path / "report.pdf").write_bytes(pdf)
    subprocess.run(["pdftoppm", "-png", "-r", "40", str(tmp_path / "report.pdf"), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 4
    for page in pages:
        assert page.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and page.stat().st_size > 2000
    text = subprocess.run(["pdftotext", str(tmp_path / "report.pdf"), "-"], check=True, capture_output=True, text=True)
    assert "Exceptions and findings" in text.stdout and "Sign-off" in text.stdout


def test_html_is_well_formed_with_inline_svg_charts(planted: Dataset) -> None:
    report = planted.report()
    html = render(report, "html").decode()
    balance = _Balance()
    balance.feed(html)
    balance.close()
    assert balance.stack == []
    root = ET.fromstring(html.split("\n", 1)[1].replace("<!DOCTYPE html>", ""))  # XHTML-compatible markup
    assert root.tag == "html"
    images = [img.get("src", "") for img in root.iter("img")]
    assert len(images) == 3
    for src in images:
        assert src.startswith("data:image/svg+xml;base64,")
        svg = ET.fromstring(base64.b64decode(src.split(",", 1)[1]))
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    sections = [h.text for h in root.iter("h2")]
    assert sections[0] == "1. Exceptions and findings" and sections[-1] == "15. Sign-off"
    assert "45 CFR 164.312(b)" in html and "45 CFR 164.308(a)(7)" in html and "45 CFR 164.316(b)(2)(i)" in html


def test_a_period_without_streamed_calls_renders_without_its_chart(planted: Dataset) -> None:
    report = planted.report()
    report["service_levels"]["ttft_histogram"] = []  # no streams: no time-to-first-token chart
    html = render(report, "html").decode()
    assert html.count("data:image/svg+xml;base64,") == 2
    assert render(report, "pdf").startswith(b"%PDF-")


def test_markdown_and_json_forms(planted: Dataset) -> None:
    report = planted.report()
    markdown = render(report, "md").decode()
    for heading in (
        "## 1. Exceptions and findings",
        "## 9. Integrity of the audit trail",
        "## 14. Standards referenced",
        "## 15. Sign-off",
    ):
        assert heading in markdown
    assert "| high | integrity | `integrity.modified` |" in markdown
    jsonschema.validate(json.loads(render(report, "json")), SCHEMA)


def test_nothing_secret_reaches_a_report(planted: Dataset) -> None:
    body = planted.issue("json").body.decode()
    kek = (planted.settings.data_dir / "keys" / "kek.key").read_text()
    key_material = json.loads(kek)["keys"]
    assert all(material not in body for material in key_material.values())
    assert "patient-" not in body  # Dify end-user ids appear only as blind indexes
    assert "question from" not in body and "an answer" not in body


def test_markdown_carries_the_policy_actions_and_the_standards(planted: Dataset) -> None:
    """The Markdown form once left out the policy-action table and the standards section that HTML and
    PDF have."""
    report = planted.report()
    assert report["phi"]["policy_actions"] == [{"action": "redact", "stage": "request", "count": 12}]
    markdown = render(report, "md").decode()
    html = render(report, "html").decode()
    assert "| redact | request | 12 |" in markdown
    assert '<td>redact</td><td>request</td><td class="n">12</td>' in html
    standards = markdown.split("## 14. Standards referenced", 1)[1]
    for s in report["standards"]:
        assert f"| {s['citation']} | {s['title']} |" in standards
    for name in report["retention"]["backup_retention"]:
        assert f"| {name} |" in markdown.split("## 12. Retention", 1)[1]
