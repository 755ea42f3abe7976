"""Charts for the HTML and PDF forms: matplotlib figures (no pyplot state) saved as SVG, deterministic
(fixed hash salt, no date) so the same report renders to the same bytes."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "sentinel-report"
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable

from matplotlib.figure import Figure  # noqa: E402

from sentinel.report.queries import bin_upper  # noqa: E402

_OK, _BAD, _LINE = "#4c78a8", "#e45756", "#f58518"


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: the SVG is embedded in HTML


def _times(buckets: list[dict[str, Any]]) -> list[float]:
    """Bucket starts as matplotlib date numbers (the axes are then told they hold dates)."""
    # matplotlib's default date epoch is 1970-01-01: a date number is days since the Unix epoch.
    return [datetime.fromisoformat(b["start"].replace("Z", "+00:00")).timestamp() / 86400 for b in buckets]


def activity(report: dict[str, Any]) -> str:
    buckets = report["activity"]["timeline"]["buckets"]
    step = report["activity"]["timeline"]["bucket_seconds"]
    figure = Figure(figsize=(8, 2.6))
    axes = figure.subplots()
    times = _times(buckets)
    width = step / 86400 * 0.9
    ok = [b["calls"] - b["failed"] for b in buckets]
    axes.bar(times, ok, width=width, color=_OK, label="calls")
    axes.bar(times, [b["failed"] for b in buckets], width=width, bottom=ok, color=_BAD, label="failed")
    axes.xaxis_date()
    axes.set_ylabel("calls per " + ("hour" if step == 3600 else "day"))
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    axes.tick_params(labelsize=8)
    figure.autofmt_xdate()
    return _svg(figure)


def error_rate(report: dict[str, Any]) -> str:
    buckets = report["activity"]["timeline"]["buckets"]
    levels = report["service_levels"]["error_rate"]
    figure = Figure(figsize=(8, 2.2))
    axes = figure.subplots()
    axes.plot(_times(buckets), [b["error_rate"] * 100 for b in buckets], color=_BAD, label="error rate")
    axes.axhline(levels["warning"] * 100, color=_LINE, linestyle=":", label="warning")
    axes.axhline(levels["critical"] * 100, color=_BAD, linestyle="--", label="alert")
    axes.xaxis_date()
    axes.set_ylabel("% of calls")
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    axes.tick_params(labelsize=8)
    figure.autofmt_xdate()
    return _svg(figure)


def ttft(report: dict[str, Any]) -> str | None:
    histogram = report["service_levels"]["ttft_histogram"]
    if not histogram:
        return None
    figure = Figure(figsize=(8, 2.2))
    axes = figure.subplots()
    edges = [bin_upper(b) for b, _ in histogram]
    axes.step(edges, [count for _, count in histogram], where="pre", color=_OK)
    ttft_rows = [r for r in report["service_levels"]["latency"] if r["indicator"] == "ttft" and r["model"] is None]
    if ttft_rows:
        row = ttft_rows[0]
        axes.axvline(row["warning"], color=_LINE, linestyle=":", label=f"warning {row['warning']:g} s")
        axes.axvline(row["critical"], color=_BAD, linestyle="--", label=f"alert {row['critical']:g} s")
        if row["p95"] is not None:
            axes.axvline(row["p95"], color="black", linewidth=0.8, label=f"p95 {row['p95']:.3f} s")
    axes.set_xscale("log")
    axes.set_xlabel("time to first token (s)")
    axes.set_ylabel("streams")
    axes.legend(loc="upper right", fontsize=8, frameon=False)
    axes.tick_params(labelsize=8)
    return _svg(figure)


def all_charts(report: dict[str, Any]) -> dict[str, str | None]:
    return {"activity": activity(report), "error_rate": error_rate(report), "ttft": ttft(report)}
