"""Backup and drill outcomes as Prometheus metrics, read from the run log at scrape time.

The names are fixed (alert rules depend on them). `last_size_bytes` and `last_uploaded_bytes`
describe the last successful backup (a failed run has no snapshot); `last_run` and
`last_duration` describe the last run whatever its outcome. Timestamps are when a run finished.

The repository gauges say what the last look at a plan's repository (any backup, prune, verify, list,
restore or drill on this host) found against the signed snapshot index: snapshots missing or damaged,
an index cut back, and losses an operator acknowledged (`backup forget --lost`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sentinel.backup.settings import PlanSettings
from sentinel.backup.state import RunLog


class BackupCollector(Collector):
    def __init__(self, log: RunLog, plans: Mapping[str, PlanSettings]) -> None:
        self.log = log
        self.plans = plans

    def collect(self) -> Iterable[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["plan"])

        last_success = gauge("sentinel_backup_last_success_timestamp_seconds", "When the last successful backup ended.")
        last_run = gauge("sentinel_backup_last_run_timestamp_seconds", "When the last backup run ended.")
        duration = gauge("sentinel_backup_last_duration_seconds", "How long the last backup run took.")
        size = gauge("sentinel_backup_last_size_bytes", "Bytes in the last successful snapshot.")
        uploaded = gauge("sentinel_backup_last_uploaded_bytes", "Bytes the last successful backup uploaded.")
        runs = CounterMetricFamily(
            "sentinel_backup_runs", "Backup runs by outcome (success/failure).", labels=["plan", "outcome"]
        )
        backups = self.log.latest("backup")
        for plan, run in backups.items():
            last_run.add_metric([plan], run.finished)
            duration.add_metric([plan], run.duration)
        for plan, run in self.log.latest("backup", outcome="success").items():
            last_success.add_metric([plan], run.finished)
            size.add_metric([plan], float(run.size or 0))
            uploaded.add_metric([plan], float(run.uploaded or 0))
        counts = self.log.counts("backup")
        for plan in sorted(set(self.plans) | {p for p, _ in counts}):
            for outcome in ("success", "failure"):
                runs.add_metric([plan, outcome], float(counts.get((plan, outcome), 0)))

        drill_success = gauge("sentinel_drill_last_success_timestamp_seconds", "When the last passing drill ended.")
        drill_run = gauge("sentinel_drill_last_run_timestamp_seconds", "When the last restore drill ended.")
        passed = gauge("sentinel_drill_last_passed", "1 if the last drill passed every check and target, else 0.")
        rto = gauge("sentinel_drill_last_rto_seconds", "Measured recovery time of the last drill.")
        rpo = gauge("sentinel_drill_last_rpo_seconds", "Measured recovery point (data age) of the last drill.")
        rto_target = gauge("sentinel_drill_rto_target_seconds", "Configured recovery time objective.")
        rpo_target = gauge("sentinel_drill_rpo_target_seconds", "Configured recovery point objective.")
        for plan, run in self.log.latest("drill").items():
            drill_run.add_metric([plan], run.finished)
            passed.add_metric([plan], 1.0 if run.passed else 0.0)
            if run.rto is not None:
                rto.add_metric([plan], run.rto)
            if run.rpo is not None:
                rpo.add_metric([plan], run.rpo)
        for plan, run in self.log.latest("drill", outcome="success").items():
            drill_success.add_metric([plan], run.finished)
        for plan, settings in sorted(self.plans.items()):
            rto_target.add_metric([plan], settings.drill.rto_target)
            rpo_target.add_metric([plan], settings.drill.rpo_target)
        yield from (last_success, last_run, duration, size, uploaded, runs)
        yield from self._health()

        yield from (drill_success, drill_run, passed, rto, rpo, rto_target, rpo_target)

    def _health(self) -> Iterable[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["plan"])

        missing = gauge(
            "sentinel_backup_snapshots_missing",
            "Snapshots the signed snapshot index names that the repository no longer holds (not acknowledged).",
        )
        damaged = gauge("sentinel_backup_snapshots_damaged", "Snapshots whose manifest does not authenticate.")
        cut_back = gauge(
            "sentinel_backup_index_cut_back", "1 if the signed snapshot index is older than an entry this host saw."
        )
        lost = gauge("sentinel_backup_snapshots_lost_acknowledged", "Missing or damaged snapshots acknowledged lost.")
        checked = gauge(
            "sentinel_backup_repository_checked_timestamp_seconds",
            "When a backup, prune, verify, list, restore or drill last checked the repository against its index.",
        )
        for plan, health in sorted(self.log.health().items()):
            missing.add_metric([plan], float(health.missing))
            damaged.add_metric([plan], float(health.damaged))
            cut_back.add_metric([plan], 1.0 if health.cut_back else 0.0)
            lost.add_metric([plan], float(health.lost))
            checked.add_metric([plan], health.checked)
        yield from (missing, damaged, cut_back, lost, checked)
