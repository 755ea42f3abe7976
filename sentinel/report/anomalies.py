"""Anomaly rules: each looks at store-side aggregates (calls per caller per hour, failures per window,
failed admin logins) and names the rule that flagged what it found.

- `anomaly.off_hours`: a caller made at least `off_hours_min` calls in one hour outside business
  hours (`business_hours` on `business_days`, in `timezone`); consecutive hours are one finding.
- `anomaly.volume_spike`: a caller's calls in one hour exceeded max(`spike_min`, `spike_factor` x
  its busy-hour level: the 90th percentile of its hourly calls over every hour of the period, idle
  hours included, so a daily rhythm is not a spike).
- `anomaly.error_burst`: a window of `error_burst_window` seconds had at least `error_burst_min`
  failures, at least `error_burst_ratio` of its counted calls; consecutive windows are one finding.
- `anomaly.new_caller`: an API key id first seen in the period while the store holds earlier
  interactions (on a store that starts inside the period every caller would be new: not flagged).
- `anomaly.admin_auth_failed`: failed admin API authentications, per client address; high
  severity from `auth_failures_high` attempts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sentinel.periods import iso
from sentinel.report.model import Finding, Period
from sentinel.report.queries import Bucket
from sentinel.report.settings import ReportSettings

HOUR = 3600


def _runs(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive integers grouped as (first, last)."""
    runs: list[tuple[int, int]] = []
    for i in sorted(indexes):
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def off_hours(settings: ReportSettings, hour_index: int) -> bool:
    local = datetime.fromtimestamp(hour_index * HOUR, ZoneInfo(settings.timezone))
    start, end = settings.business_hours
    return local.weekday() not in settings.business_days or not start <= local.hour < end


def caller_anomalies(settings: ReportSettings, period: Period, hourly: list[Bucket]) -> list[Finding]:
    findings: list[Finding] = []
    by_caller: dict[str, dict[int, int]] = defaultdict(dict)
    for bucket in hourly:
        by_caller[bucket.caller or "(no API key)"][bucket.index] = bucket.calls
    first_hour, last_hour = int(period.since // HOUR), int((period.until - 1e-9) // HOUR)
    hours = max(1, last_hour - first_hour + 1)
    for caller, counts in sorted(by_caller.items()):
        flagged = {h: c for h, c in counts.items() if c >= settings.off_hours_min and off_hours(settings, h)}
        for first, last in _runs(flagged):
            calls = sum(flagged[h] for h in range(first, last + 1))
            findings.append(
                Finding(
                    "anomalies",
                    "anomaly.off_hours",
                    "medium",
                    f"Off-hours use by {caller}",
                    f"{calls} calls between {iso(first * HOUR)} and {iso((last + 1) * HOUR)}, outside business hours "
                    f"({settings.business_hours[0]:02d}:00-{settings.business_hours[1]:02d}:00 {settings.timezone}); "
                    f"rule: >= {settings.off_hours_min} calls in an off-hours hour",
                    {"caller": caller, "from": iso(first * HOUR), "to": iso((last + 1) * HOUR), "calls": calls},
                )
            )
        values = sorted(counts.get(h, 0) for h in range(first_hour, last_hour + 1))
        busy = float(values[int(0.9 * (hours - 1))]) if values else 0.0
        limit = max(float(settings.spike_min), settings.spike_factor * busy)
        spikes = {h: c for h, c in counts.items() if c > limit}
        for first, last in _runs(spikes):
            peak = max(spikes[h] for h in range(first, last + 1))
            findings.append(
                Finding(
                    "anomalies",
                    "anomaly.volume_spike",
                    "medium",
                    f"Volume spike by {caller}",
                    f"up to {peak} calls an hour between {iso(first * HOUR)} and {iso((last + 1) * HOUR)}; "
                    f"its busy-hour level (90th percentile of its hourly calls) is {busy:g}; rule: "
                    f"> max({settings.spike_min}, {settings.spike_factor:g} x that) = {limit:g}",
                    {"caller": caller, "from": iso(first * HOUR), "to": iso((last + 1) * HOUR), "peak": peak},
                )
            )
    return findings


def error_bursts(settings: ReportSettings, windows: list[Bucket]) -> list[Finding]:
    seconds = settings.error_burst_window
    bad = {
        w.index: w
        for w in windows
        if w.failed >= settings.error_burst_min and w.counted and w.failed / w.counted >= settings.error_burst_ratio
    }
    findings = []
    for first, last in _runs(bad):
        failed = sum(bad[i].failed for i in range(first, last + 1))
        counted = sum(bad[i].counted for i in range(first, last + 1))
        findings.append(
            Finding(
                "anomalies",
                "anomaly.error_burst",
                "high",
                "Error burst",
                f"{failed} of {counted} calls failed between {iso(first * seconds)} and {iso((last + 1) * seconds)}; "
                f"rule: >= {settings.error_burst_min} failures and >= {settings.error_burst_ratio:.0%} of the calls "
                f"in a {seconds} s window",
                {"from": iso(first * seconds), "to": iso((last + 1) * seconds), "failed": failed, "calls": counted},
            )
        )
    return findings


def new_callers(period: Period, active: set[str], before: set[str], history: bool) -> list[Finding]:
    if not history:
        return []
    return [
        Finding(
            "anomalies",
            "anomaly.new_caller",
            "low",
            f"New caller {caller}",
            f"API key id {caller} made its first call in this period (no earlier interaction in the store)",
            {"caller": caller},
        )
        for caller in sorted(active - before)
    ]


def failed_attempts(doc: dict[str, Any]) -> int:
    """The failed logins an `admin_auth_failed` record stands for: the count of its client's window
    (sentinel/admin/logins.py), 1 for a record of one attempt (written before windows)."""
    count = ((doc.get("event") or {}).get("details") or {}).get("count", 1)
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


def _details(doc: dict[str, Any]) -> dict[str, Any]:
    details = (doc.get("event") or {}).get("details")
    return details if isinstance(details, dict) else {}


def auth_failures(settings: ReportSettings, events: list[dict[str, Any]]) -> list[Finding]:
    by_client: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in events:
        by_client[str((doc.get("event") or {}).get("actor"))].append(doc)
    findings = []
    for client, docs in sorted(by_client.items()):
        attempts = sum(failed_attempts(d) for d in docs)
        reasons = sorted(
            {str(r) for d in docs for r in (_details(d).get("reasons") or {})}
            | {str(_details(d)["reason"]) for d in docs if "reason" in _details(d)}
        )
        paths = sorted(
            {str(p) for d in docs for p in (_details(d).get("paths") or [])}
            | {str(_details(d)["path"]) for d in docs if "path" in _details(d)}
        )
        findings.append(
            Finding(
                "anomalies",
                "anomaly.admin_auth_failed",
                "high" if attempts >= settings.auth_failures_high else "medium",
                f"Failed admin API authentication from {client}",
                f"{attempts} failed attempt(s) ({', '.join(reasons)}) on {', '.join(paths)} between "
                f"{docs[0].get('@timestamp')} and {docs[-1].get('@timestamp')}; rule: every failure is counted "
                f"(one record per client per window), high from {settings.auth_failures_high}",
                {"client": client, "attempts": attempts, "reasons": reasons, "paths": paths},
            )
        )
    return findings
