"""Report sections on use: activity by caller, end user, model and outcome, and service levels."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sentinel.monitoring import thresholds
from sentinel.periods import iso
from sentinel.report import anomalies
from sentinel.report.inputs import ReportInputs
from sentinel.report.model import Finding, Period
from sentinel.report.queries import Breakdown, LatencyBin, ReportQueries, percentile
from sentinel.report.standards import cite


def bucket_seconds(period: Period) -> int:
    return 3600 if period.seconds <= 3 * 86400 else 86400


def marginal(rows: list[Breakdown], key: Callable[[Breakdown], str | None]) -> list[dict[str, Any]]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for row in rows:
        t = totals[key(row) or "(none)"]
        for i, value in enumerate((row.calls, row.failed, row.counted, row.input_tokens, row.output_tokens)):
            t[i] += value
    return [
        {
            "name": name,
            "calls": t[0],
            "failed": t[1],
            "error_rate": t[1] / t[2] if t[2] else 0.0,
            "input_tokens": t[3],
            "output_tokens": t[4],
        }
        for name, t in sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))
    ]


async def activity_section(inputs: ReportInputs, q: ReportQueries) -> tuple[dict[str, Any], list[Finding]]:
    period, rules = inputs.period, inputs.settings.report
    breakdown = await q.breakdown(period)
    hourly = await q.buckets(period, 3600, by_caller=True)
    windows = await q.buckets(period, rules.error_burst_window, by_caller=False)
    distinct, anonymous, top = await q.users(period, 20)
    before = await q.callers_before(period.since)
    span = await q.span()
    calls = sum(r.calls for r in breakdown)
    failed = sum(r.failed for r in breakdown)
    counted = sum(r.counted for r in breakdown)
    by_caller: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    step = bucket_seconds(period)
    timeline: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for b in hourly:
        c = by_caller[b.caller or "(no API key)"]
        c[0], c[1], c[2] = c[0] + b.calls, c[1] + b.failed, c[2] + b.counted
        t = timeline[int(b.index * 3600 // step)]
        t[0], t[1], t[2] = t[0] + b.calls, t[1] + b.failed, t[2] + b.counted
    first_bucket, last_bucket = int(period.since // step), int((period.until - 1e-9) // step)
    active = {b.caller for b in hourly if b.caller}
    history = span["oldest_started_at"] is not None and span["oldest_started_at"] < period.since
    found = anomalies.caller_anomalies(rules, period, hourly)
    found += anomalies.error_bursts(rules, windows)
    found += anomalies.new_callers(period, active, before, history)
    identified = sum(v[0] for k, v in by_caller.items() if k != "(no API key)")
    activity = {
        "standards": cite("activity"),
        "totals": {
            "calls": calls,
            "failed": failed,
            "error_rate": failed / counted if counted else 0.0,
            "input_tokens": sum(r.input_tokens for r in breakdown),
            "output_tokens": sum(r.output_tokens for r in breakdown),
            "callers": len(active),
            "end_users": distinct,
            "calls_without_end_user": anonymous,
            "calls_with_caller_id": identified,
        },
        "by_caller": [
            {
                "caller": k,
                "calls": v[0],
                "failed": v[1],
                "error_rate": v[1] / v[2] if v[2] else 0.0,
                "new": history and k in active - before,
            }
            for k, v in sorted(by_caller.items(), key=lambda item: (-item[1][0], item[0]))
        ],
        "top_end_users": [{"user_index": u, "calls": c, "failed": f} for u, c, f in top],
        "by_model": marginal(breakdown, lambda r: r.model),
        "by_operation": marginal(breakdown, lambda r: r.operation),
        "by_outcome": marginal(breakdown, lambda r: r.outcome),
        "timeline": {
            "bucket_seconds": step,
            "buckets": [
                {
                    "start": iso(i * step),
                    "calls": timeline[i][0],
                    "failed": timeline[i][1],
                    "error_rate": timeline[i][1] / timeline[i][2] if timeline[i][2] else 0.0,
                }
                for i in range(first_bucket, last_bucket + 1)
            ],
        },
    }
    return {"activity": activity, "span": span}, found


def level_of(value: float | None, level: thresholds.Threshold) -> str:
    if value is None:
        return "no data"
    return "alert" if value > level.critical else "warning" if value > level.warning else "normal"


def service_levels_section(bins: list[LatencyBin], activity: dict[str, Any]) -> tuple[dict[str, Any], list[Finding]]:
    levels = {
        "ttft": thresholds.TTFT_P95,
        "generation": thresholds.UNSTREAMED_GENERATION_P95,
        "embeddings": thresholds.EMBEDDINGS_P95,
    }
    labels = {
        "ttft": "Time to first token (streams)",
        "generation": "Non-streamed generation (successful)",
        "embeddings": "Embeddings (successful)",
    }
    grouped: dict[tuple[str, str | None], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for b in bins:
        grouped[(b.kind, None)][b.bin] += b.count
        grouped[(b.kind, b.model or "(none)")][b.bin] += b.count
    rows, findings = [], []
    for (kind, model), counts in sorted(grouped.items(), key=lambda item: (item[0][0], item[0][1] or "")):
        level = levels[kind]
        p95 = percentile(counts, 0.95)
        status = level_of(p95, level)
        rows.append(
            {
                "indicator": kind,
                "label": labels[kind],
                "model": model,
                "samples": sum(counts.values()),
                "p50": percentile(counts, 0.5),
                "p95": p95,
                "p99": percentile(counts, 0.99),
                "warning": level.warning,
                "critical": level.critical,
                "status": status,
            }
        )
        if status == "alert":
            findings.append(
                Finding(
                    "service_levels",
                    f"service_level.{kind}_p95",
                    "medium",
                    f"{labels[kind]} p95 above the alert threshold" + (f" for {model}" if model else ""),
                    f"p95 {p95:.3f} s over the period against an alert level of {level.critical:g} s",
                    {"indicator": kind, "model": model, "p95": p95},
                )
            )
    rate = activity["totals"]["error_rate"]
    error = {
        "value": rate,
        "warning": thresholds.ERROR_RATIO.warning,
        "critical": thresholds.ERROR_RATIO.critical,
        "status": level_of(rate if activity["totals"]["calls"] else None, thresholds.ERROR_RATIO),
    }
    if error["status"] == "alert":
        findings.append(
            Finding(
                "service_levels",
                "service_level.error_rate",
                "medium",
                "Error rate above the alert threshold",
                f"{rate:.2%} of counted calls failed over the period (alert level "
                f"{thresholds.ERROR_RATIO.critical:.1%})",
                {"error_rate": rate},
            )
        )
    histogram: dict[int, int] = defaultdict(int)
    for b in bins:
        if b.kind == "ttft":
            histogram[b.bin] += b.count
    return {
        "standards": cite("service_levels"),
        "latency": rows,
        "error_rate": error,
        "ttft_histogram": [[k, v] for k, v in sorted(histogram.items())],
        "method": "percentiles from 1 ms / 1 % bins, reported as the bin's upper edge",
    }, findings
