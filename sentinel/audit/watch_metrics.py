"""Continuous verification's outcomes as Prometheus metrics, read from the state file at scrape time.

The checks run in their own processes (`sentinel audit verify --scheduled`) and leave their outcomes
in the state file; `serve` and `sentinel scheduler --metrics-port` show them. The names are fixed
(alert rules depend on them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sentinel.audit.watch import CHECKS, FINDING_KINDS, CheckHistory, StateFile


class VerifyCollector(Collector):
    """The checks' outcomes as Prometheus metrics, read from the state file at scrape time.

    `intervals` are the scheduled checks' longest gaps between runs (`sentinel.cron.longest_gap`):
    the stale alert compares the time since the last completed check with them."""

    def __init__(self, state: StateFile, intervals: Mapping[str, float]) -> None:
        self.state = state
        self.intervals = intervals

    def collect(self) -> Iterable[Metric]:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("check",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        interval = gauge("sentinel_audit_verify_interval_seconds", "Longest time between two scheduled runs.")
        for check, seconds in sorted(self.intervals.items()):
            interval.add_metric([check], seconds)
        yield interval
        if not self.state.path.exists():
            return
        state = self.state.load()
        last_run = gauge("sentinel_audit_verify_last_run_timestamp_seconds", "When the last check ended.")
        last_success = gauge(
            "sentinel_audit_verify_last_success_timestamp_seconds",
            "When the last check that ran to the end ended (before the first: when the schedule began).",
        )
        duration = gauge("sentinel_audit_verify_last_duration_seconds", "How long the last check took.")
        ok = gauge("sentinel_audit_verify_ok", "1 if the last check ran to the end and found nothing, else 0.")
        records = CounterMetricFamily(
            "sentinel_audit_verify_records", "Records verified by the checks.", labels=["check"]
        )
        findings = gauge(
            "sentinel_audit_verify_findings",
            "What the last completed check found, by kind (modified, deleted, bad_signature, ...).",
            ("check", "kind"),
        )
        for check in CHECKS:
            history = state.checks.get(check, CheckHistory())
            if history.last is not None:
                last_run.add_metric([check], history.last.finished)
                duration.add_metric([check], history.last.finished - history.last.started)
                ok.add_metric([check], 1.0 if history.last.outcome == "ok" else 0.0)
            if history.completed is not None:
                last_success.add_metric([check], history.completed.finished)
                counts = history.completed.findings
                for kind in sorted(set(FINDING_KINDS) | set(counts)):
                    findings.add_metric([check, kind], float(counts.get(kind, 0)))
            elif check in self.intervals and state.scheduled_since is not None:
                last_success.add_metric([check], state.scheduled_since)
            if history.last is not None or check in self.intervals:
                records.add_metric([check], float(history.records_total))
        yield from (last_run, last_success, duration, ok, records, findings)
