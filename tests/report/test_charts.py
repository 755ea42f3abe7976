"""Charts readable at every period length: the time axes are bounded to the period (a minute, a day, a
year), every bucket is drawn inside it from its start, the error-rate line is there even for one bucket,
and legends sit above the plot, not on it (matplotlib's own geometry, read back from the figures)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sentinel.report.charts import activity_figure, error_rate_figure, ttft_figure
from tests.report.shapes import Shape, build_shape

DAY = 86400.0
SHAPES = {
    "one minute": Shape(60, 3, failing_every=2),
    "one day": Shape(DAY, 24, failing_every=5, callers=2),
    "a year": Shape(365 * DAY, 30, callers=3),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    dataset = build_shape(tmp_path_factory.mktemp("chart") / "data", SHAPES[request.param])
    data: dict[str, Any] = dataset.report()
    return data


def _no_overlap(figure: Figure) -> None:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = figure.axes[0]
    legend = axes.get_legend()
    assert legend is not None
    plot, box = axes.get_window_extent(renderer), legend.get_window_extent(renderer)
    assert box.y0 >= plot.y1 - 1, (box, plot)  # above the plotting area


def test_time_axes_are_the_period(report: dict[str, Any]) -> None:
    since, until = report["period"]["since"] / DAY, report["period"]["until"] / DAY
    for figure in (activity_figure(report), error_rate_figure(report)):
        axes = figure.axes[0]
        assert axes.get_xlim() == pytest.approx((since, until), abs=1e-9)
        _no_overlap(figure)


def test_activity_bars_lie_in_the_period_and_add_up(report: dict[str, Any]) -> None:
    since, until = report["period"]["since"] / DAY, report["period"]["until"] / DAY
    axes = activity_figure(report).axes[0]
    bars = [p for c in axes.containers for p in c]  # type: ignore[attr-defined]
    assert bars, "no bars drawn"
    for bar in bars:
        assert since - 1e-9 <= bar.get_x() and bar.get_x() + bar.get_width() <= until + 1e-9
    assert sum(b.get_height() for b in bars) == report["activity"]["totals"]["calls"]


def test_the_error_rate_line_shows_the_rates(report: dict[str, Any]) -> None:
    axes = error_rate_figure(report).axes[0]
    line = next(x for x in axes.get_lines() if x.get_label() == "error rate")
    ys = [y for y in line.get_ydata() if not math.isnan(y)]  # type: ignore[union-attr]
    expected = {round(b["error_rate"] * 100, 9) for b in report["activity"]["timeline"]["buckets"] if b["calls"]}
    assert {round(y, 9) for y in ys} == expected
    low, high = axes.get_ylim()
    assert low == 0 and high >= max(ys)  # a 66.7 % bucket is on the chart, not above it
    xs = [x for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True) if not math.isnan(y)]  # type: ignore[arg-type]
    assert min(xs) < max(xs)  # a visible line, even for a single bucket


def test_the_ttft_legend_leaves_the_histogram_free(report: dict[str, Any]) -> None:
    figure = ttft_figure(report)
    assert figure is not None
    _no_overlap(figure)
