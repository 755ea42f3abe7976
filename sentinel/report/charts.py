"""Charts for the HTML and PDF forms: matplotlib figures (no pyplot state) saved as SVG, deterministic
(fixed hash salt, no date) so the same report renders to the same bytes.

Time axes are bounded to the report's period, whatever its length (a minute to a year): a bucket is
drawn from its start to its end, clipped to the period, and legends sit above the plot, never on it."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "sentinel-report"
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sentinel.periods import parse_time  # noqa: E402
from sentinel.report.queries import bin_upper  # noqa: E402

_OK, _BAD, _LINE = "#4c78a8", "#e45756", "#f58518"
DAY = 86400.0


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: the SVG is embedded in HTML


def _date(seconds: float) -> float:
    # matplotlib's default date epoch is 1970-01-01: a date number is days since the Unix epoch.
    return seconds / DAY


def _bounds(report: dict[str, Any]) -> tuple[float, float]:
    """The period as matplotlib date numbers."""
    period = report["period"]
    return _date(float(period["since"])), _date(float(period["until"]))


def _spans(report: dict[str, Any]) -> list[tuple[float, float, dict[str, Any]]]:
    """Each timeline bucket as (start, end) date numbers clipped to the period, with the bucket."""
    timeline = report["activity"]["timeline"]
    step = float(timeline["bucket_seconds"])
    low, high = _bounds(report)
    spans = []
    for bucket in timeline["buckets"]:
        start = parse_time(bucket["start"])
        first, last = max(_date(start), low), min(_date(start + step), high)
        if first < last:
            spans.append((first, last, bucket))
    return spans


def _time_axis(axes: Axes, report: dict[str, Any]) -> None:
    low, high = _bounds(report)
    locator = AutoDateLocator(minticks=3, maxticks=8)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    axes.set_xlim(low, high)
    axes.set_xlabel("UTC", fontsize=8)


def _legend_above(axes: Axes) -> None:
    axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=4, fontsize=8, frameon=False, borderaxespad=0.0)


def activity_figure(report: dict[str, Any]) -> Figure:
    step = report["activity"]["timeline"]["bucket_seconds"]
    figure = Figure(figsize=(8, 2.6))
    axes = figure.subplots()
    spans = _spans(report)
    starts = [first for first, _, _ in spans]
    widths = [last - first for first, last, _ in spans]
    ok = [b["calls"] - b["failed"] for _, _, b in spans]
    failed = [b["failed"] for _, _, b in spans]
    # Bars span their bucket (aligned on its start, not centred on it); a thin gap keeps neighbours apart.
    gap = step / DAY * 0.06 if len(spans) > 1 else 0.0
    widths = [w - gap if w > 2 * gap else w for w in widths]
    axes.bar(starts, ok, width=widths, align="edge", color=_OK, label="calls")
    axes.bar(starts, failed, width=widths, align="edge", bottom=ok, color=_BAD, label="failed")
    _time_axis(axes, report)
    axes.set_ylim(0, max([o + f for o, f in zip(ok, failed, strict=True)] + [1]) * 1.1)
    axes.set_ylabel("calls per " + ("hour" if step == 3600 else "day"))
    _legend_above(axes)
    axes.tick_params(labelsize=8)
    return figure


def error_rate_figure(report: dict[str, Any]) -> Figure:
    levels = report["service_levels"]["error_rate"]
    figure = Figure(figsize=(8, 2.2))
    axes = figure.subplots()
    # A step per bucket over its whole span, so one bucket (a short period) is a visible line, not a lone
    # point; buckets without counted calls have no rate and leave a gap.
    xs: list[float] = []
    ys: list[float] = []
    for first, last, bucket in _spans(report):
        counted = bucket["calls"] > 0
        rate = bucket["error_rate"] * 100 if counted else math.nan
        if xs and xs[-1] != first:
            xs.append(xs[-1])
            ys.append(math.nan)
        xs += [first, last]
        ys += [rate, rate]
    axes.plot(xs, ys, color=_BAD, linewidth=1.5, label="error rate")
    axes.axhline(levels["warning"] * 100, color=_LINE, linestyle=":", label="warning")
    axes.axhline(levels["critical"] * 100, color=_BAD, linestyle="--", label="alert")
    _time_axis(axes, report)
    rates = [y for y in ys if not math.isnan(y)]
    axes.set_ylim(0, max([*rates, levels["critical"] * 100]) * 1.15 or 1.0)
    axes.set_ylabel("% of calls")
    _legend_above(axes)
    axes.tick_params(labelsize=8)
    return figure


def ttft_figure(report: dict[str, Any]) -> Figure | None:
    histogram = report["service_levels"]["ttft_histogram"]
    if not histogram:
        return None
    figure = Figure(figsize=(8, 2.2))
    axes = figure.subplots()
    edges = [bin_upper(b) for b, _ in histogram]
    axes.step(edges, [count for _, count in histogram], where="pre", color=_OK, label="streams")
    if len(edges) == 1:  # one bin: a step needs two points to show
        axes.plot(edges, [histogram[0][1]], marker="o", color=_OK)
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
    axes.set_ylim(0, max(count for _, count in histogram) * 1.1)
    _legend_above(axes)
    axes.tick_params(labelsize=8)
    return figure


def activity(report: dict[str, Any]) -> str:
    return _svg(activity_figure(report))


def error_rate(report: dict[str, Any]) -> str:
    return _svg(error_rate_figure(report))


def ttft(report: dict[str, Any]) -> str | None:
    figure = ttft_figure(report)
    return None if figure is None else _svg(figure)


def all_charts(report: dict[str, Any]) -> dict[str, str | None]:
    return {"activity": activity(report), "error_rate": error_rate(report), "ttft": ttft(report)}
