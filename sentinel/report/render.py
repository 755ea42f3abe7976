"""Rendering a gathered report: JSON (the canonical form), Markdown, HTML with embedded SVG charts, PDF
(WeasyPrint, from the same HTML, fetching nothing but the inline `data:` images it carries), and OSCAL
assessment results (JSON, for GRC tools; see oscal.py)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Literal

import orjson
from jinja2 import Environment, FileSystemLoader, StrictUndefined

Format = Literal["html", "pdf", "json", "md", "oscal"]
FORMATS: tuple[Format, ...] = ("html", "pdf", "json", "md", "oscal")
MEDIA_TYPES: dict[str, str] = {
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
    "oscal": "application/json",
}
EXTENSIONS: dict[str, str] = {"html": "html", "pdf": "pdf", "json": "json", "md": "md", "oscal": "oscal.json"}
TEMPLATES = Path(__file__).parent / "templates"


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f} %"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s" if value < 120 else f"{value / 60:.1f} min"


def _num(value: float | int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _md(value: Any) -> str:
    """A value safe inside a Markdown table cell."""
    return "-" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _environment(autoescape: bool) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(pct=_pct, secs=_secs, num=_num, md=_md)
    return env


def to_json(report: dict[str, Any]) -> bytes:
    data: bytes = orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return data


def to_markdown(report: dict[str, Any]) -> bytes:
    return _environment(False).get_template("report.md.j2").render(r=report).encode()


def to_html(report: dict[str, Any], *, for_print: bool = False) -> bytes:
    from sentinel.report.charts import all_charts

    charts = {
        name: "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
        for name, svg in all_charts(report).items()
        if svg is not None
    }
    css = (TEMPLATES / "report.css").read_text()
    html = _environment(True).get_template("report.html.j2").render(r=report, charts=charts, css=css, print=for_print)
    return html.encode()


def to_pdf(report: dict[str, Any]) -> bytes:
    from weasyprint import HTML
    from weasyprint.urls import URLFetcher

    # Only the inline chart images: a report never makes WeasyPrint read a file or the network.
    fetcher = URLFetcher(allowed_protocols={"data"})
    pdf: bytes = HTML(string=to_html(report, for_print=True).decode(), url_fetcher=fetcher).write_pdf()
    return pdf


def to_oscal(report: dict[str, Any]) -> bytes:
    from sentinel.report.oscal import assessment_results

    return to_json(assessment_results(report))


def render(report: dict[str, Any], fmt: Format) -> bytes:
    if fmt == "json":
        return to_json(report)
    if fmt == "oscal":
        return to_oscal(report)
    if fmt == "md":
        return to_markdown(report)
    if fmt == "html":
        return to_html(report)
    if fmt == "pdf":
        return to_pdf(report)
    raise ValueError(f"unknown report format {fmt!r}; one of {', '.join(FORMATS)}")
