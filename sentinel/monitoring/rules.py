"""Prometheus recording rules and alerts for Sentinel, rendered to `rules/sentinel.rules.yml`.

Every alert compares a `query` (which returns data whenever the metrics exist) with a threshold
from `thresholds.py`; the live-query test runs both. Every alert carries `severity`, `summary`,
`description` and a `runbook_url` into `docs/runbook.md`, anchored at the alert's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sentinel.monitoring import thresholds as t
from sentinel.monitoring.thresholds import Threshold

RUNBOOK = "docs/runbook.md"
RATE_WINDOW = "5m"

Severity = Literal["warning", "critical"]


def number(value: float) -> str:
    """A threshold as PromQL and people write it: 0.5, 1, 93600."""
    return str(int(value)) if float(value).is_integer() else repr(value)


@dataclass(frozen=True)
class Recording:
    record: str
    expr: str
    group: str


@dataclass(frozen=True)
class Alert:
    """One alerting rule: fires when `query op threshold` holds for `for_` (minus what `unless` removes)."""

    name: str
    severity: Severity
    query: str
    threshold: float
    for_: str
    summary: str
    description: str
    group: str
    op: str = ">"
    unless: str | None = None
    """A PromQL `unless ...` clause applied after the comparison (e.g. preallocating model servers)."""

    @property
    def expr(self) -> str:
        expr = f"{self.query} {self.op} {number(self.threshold)}"
        if self.unless:
            expr = f"({expr})\nunless {self.unless}"
        return expr

    @property
    def bool_expr(self) -> str:
        """1 where the alert condition holds, 0 where not, for every series: what Grafana-managed rules evaluate."""
        expr = f"{self.query} {self.op} bool {number(self.threshold)}"
        if self.unless:
            expr = f"({expr})\nunless {self.unless}"
        return expr

    @property
    def anchor(self) -> str:
        return self.name.lower()

    def runbook_url(self, base: str = "") -> str:
        return f"{base}{RUNBOOK}#{self.anchor}"


def _levels(
    name: str,
    threshold: Threshold,
    *,
    query: str,
    for_: tuple[str, str],
    summary: str,
    description: str,
    group: str,
    unless: str | None = None,
) -> list[Alert]:
    """The warning and the critical rule of one indicator (same name, different severity and level)."""
    return [
        Alert(name, "warning", query, threshold.warning, for_[0], summary, description, group, unless=unless),
        Alert(name, "critical", query, threshold.critical, for_[1], summary, description, group, unless=unless),
    ]


W = RATE_WINDOW

TTFT_P95 = "job_model:gen_ai_server_time_to_first_token_seconds:p95_5m"
ANSWER_P95 = "job_operation_stream:sentinel_request_duration_seconds:p95_5m"
OVERHEAD_P99 = "job:sentinel_proxy_overhead_seconds:p99_5m"
REQUEST_RATE = "job:sentinel_requests:rate5m"
ERROR_RATIO = "job:sentinel_request_errors:ratio_rate5m"

# Counted as failures: outcome "error" except caller mistakes (upstream 4xx: bad request, auth,
# rate limits), which the dashboards show apart. Client cancellations ("aborted") are neither
# failures nor part of the base; Sentinel's own refusals ("rejected") count in the base only.
_FAILED = f'rate(sentinel_requests_total{{outcome="error",error_type!="upstream_4xx"}}[{W}])'
_COUNTED = f'rate(sentinel_requests_total{{outcome!="aborted"}}[{W}])'

RECORDING = [
    Recording(
        TTFT_P95,
        f"histogram_quantile(0.95, sum by (job, gen_ai_request_model, le) "
        f"(rate(gen_ai_server_time_to_first_token_seconds_bucket[{W}])))",
        "sentinel.recording",
    ),
    Recording(
        ANSWER_P95,
        f"histogram_quantile(0.95, sum by (job, gen_ai_operation_name, stream, le) "
        f"(rate(sentinel_request_duration_seconds_bucket[{W}])))",
        "sentinel.recording",
    ),
    Recording(
        OVERHEAD_P99,
        f"histogram_quantile(0.99, sum by (job, le) (rate(sentinel_proxy_overhead_seconds_bucket[{W}])))",
        "sentinel.recording",
    ),
    Recording(REQUEST_RATE, f"sum by (job) ({_COUNTED})", "sentinel.recording"),
    Recording(
        ERROR_RATIO,
        # `or 0 * ...`: a ratio of 0, not no data, before the first failure.
        f"(\n  sum by (job) ({_FAILED})\n  or\n  0 * sum by (job) ({_COUNTED})\n)\n/\nsum by (job) ({_COUNTED})",
        "sentinel.recording",
    ),
]

_PREALLOCATING = '(job, instance) (sentinel_gpu_source_up{source=~"vllm|sglang"} == 1)'

ALERTS: list[Alert] = [
    *_levels(
        "SentinelTimeToFirstTokenHigh",
        t.TTFT_P95,
        query=TTFT_P95,
        for_=("10m", "5m"),
        summary="Time to first token is slow for {{ $labels.gen_ai_request_model }}",
        description="p95 time to first token over 5m is {{ $value | humanizeDuration }} for model "
        "{{ $labels.gen_ai_request_model }} on {{ $labels.job }}.",
        group="sentinel.latency",
    ),
    *_levels(
        "SentinelEmbeddingsLatencyHigh",
        t.EMBEDDINGS_P95,
        query=f'{ANSWER_P95}{{gen_ai_operation_name="embeddings"}}',
        for_=("10m", "5m"),
        summary="Embeddings calls are slow",
        description="p95 duration of successful embeddings calls over 5m is {{ $value | humanizeDuration }} "
        "on {{ $labels.job }}.",
        group="sentinel.latency",
    ),
    *_levels(
        "SentinelUnstreamedGenerationSlow",
        t.UNSTREAMED_GENERATION_P95,
        query=f'{ANSWER_P95}{{gen_ai_operation_name=~"chat|text_completion",stream="false"}}',
        for_=("15m", "10m"),
        summary="Non-streamed {{ $labels.gen_ai_operation_name }} answers are slow",
        description="p95 duration of successful non-streamed {{ $labels.gen_ai_operation_name }} calls over 5m "
        "is {{ $value | humanizeDuration }} on {{ $labels.job }} (clients time out at 300 s).",
        group="sentinel.latency",
    ),
    *_levels(
        "SentinelProxyOverheadHigh",
        t.PROXY_OVERHEAD_P99,
        query=OVERHEAD_P99,
        for_=("10m", "5m"),
        summary="Sentinel adds too much latency",
        description="p99 of the latency Sentinel itself adds over 5m is {{ $value | humanizeDuration }} "
        "on {{ $labels.job }}.",
        group="sentinel.latency",
    ),
    *_levels(
        "SentinelErrorRateHigh",
        t.ERROR_RATIO,
        query=ERROR_RATIO,
        for_=("10m", "5m"),
        summary="Model calls are failing",
        description="{{ $value | humanizePercentage }} of requests through {{ $labels.job }} failed over 5m "
        "(client cancellations and caller errors excluded).",
        group="sentinel.errors",
    ),
    Alert(
        name="SentinelUpstreamDown",
        severity="critical",
        query="sentinel_upstream_up",
        threshold=0,
        for_="2m",
        summary="The model server is unreachable",
        description="Sentinel on {{ $labels.instance }} cannot reach its model server; every model call fails.",
        group="sentinel.errors",
        op="==",
    ),
    Alert(
        name="SentinelRecordsDropped",
        severity="warning",
        query="sum by (job, instance) (increase(sentinel_recorder_dropped_total[15m]))",
        threshold=0,
        for_="0m",
        summary="Interactions were not recorded",
        description="{{ $value | humanize }} interactions on {{ $labels.instance }} were dropped before "
        "recording in 15m (recorder queue full): they are missing from metrics, traces and the audit trail.",
        group="sentinel.errors",
    ),
    Alert(
        name="SentinelSinkFailing",
        severity="warning",
        query="sum by (job, instance, sink) (increase(sentinel_sink_dropped_total[15m]) "
        "+ increase(sentinel_sink_failures_total[15m]))",
        threshold=0,
        for_="0m",
        summary="Sink {{ $labels.sink }} is losing records",
        description="{{ $value | humanize }} interactions were dropped or failed to write in sink "
        "{{ $labels.sink }} on {{ $labels.instance }} in 15m.",
        group="sentinel.errors",
    ),
    *_levels(
        "SentinelGpuMemoryHigh",
        t.GPU_MEMORY,
        query="sentinel_gpu_memory_utilization_ratio",
        for_=("15m", "5m"),
        summary="GPU {{ $labels.gpu }} memory is filling up",
        description="GPU {{ $labels.gpu }} ({{ $labels.source }}) on {{ $labels.instance }} uses "
        "{{ $value | humanizePercentage }} of its memory.",
        group="sentinel.gpu",
        # vLLM and SGLang preallocate ~90 % of VRAM by design; their pressure signal is the KV cache.
        unless=f"on {_PREALLOCATING}",
    ),
    *_levels(
        "SentinelKvCacheSaturated",
        t.KV_CACHE,
        query="sentinel_gpu_kv_cache_usage_ratio",
        for_=("15m", "5m"),
        summary="The model server's KV cache is nearly full",
        description="{{ $labels.source }} on {{ $labels.instance }} uses {{ $value | humanizePercentage }} "
        "of its KV cache; new requests queue and running ones get preempted.",
        group="sentinel.gpu",
    ),
    Alert(
        name="SentinelGpuSourceAbsent",
        severity="warning",
        query="sentinel_gpu_source_up",
        threshold=0,
        for_="15m",
        summary="GPU metrics from {{ $labels.source }} are missing",
        description="Sentinel on {{ $labels.instance }} cannot read GPU source {{ $labels.source }}; GPU memory "
        "and KV-cache alerts for it cannot fire.",
        group="sentinel.gpu",
        op="==",
    ),
    *_levels(
        "SentinelAuditShippingLagHigh",
        t.AUDIT_SHIPPING_LAG,
        query="sentinel_audit_shipping_lag_seconds",
        for_=("5m", "5m"),
        summary="Audit records are not reaching Elasticsearch",
        description="The oldest unshipped audit record on {{ $labels.instance }} is "
        "{{ $value | humanizeDuration }} old.",
        group="sentinel.audit",
    ),
    Alert(
        name="SentinelAuditShippingFailing",
        severity="warning",
        query=f"sum by (job, instance) (rate(sentinel_audit_ship_failures_total[{W}]))",
        threshold=0,
        for_="15m",
        summary="Audit shipping keeps failing",
        description="Shipping audit records from {{ $labels.instance }} to Elasticsearch has failed for 15m "
        '({{ printf "%.3f" $value }} failures/s); records wait in the spool.',
        group="sentinel.audit",
    ),
    Alert(
        name="SentinelAuditRecordsLost",
        severity="critical",
        query="sum by (job, instance) (increase(sentinel_audit_records_lost_total[15m]))",
        threshold=0,
        for_="0m",
        summary="Audit records were lost",
        description="{{ $value | humanize }} audit records on {{ $labels.instance }} were lost in 15m "
        "(best-effort mode): the audit trail has a gap.",
        group="sentinel.audit",
    ),
    Alert(
        name="SentinelAuditFork",
        severity="critical",
        query="sum by (job, instance) (increase(sentinel_audit_records_forked_total[1h]))",
        threshold=0,
        for_="0m",
        summary="Another writer uses this audit chain's instance id",
        description="{{ $value | humanize }} audit records from {{ $labels.instance }} were refused in the last hour: "
        "the store holds different records under their ids, so two Sentinels write one chain. Ours are kept "
        "in the spool; `sentinel audit forks` lists them.",
        group="sentinel.audit",
    ),
    Alert(
        name="SentinelAuditAnchorLagging",
        severity="critical",
        query="max by (job, instance) (sentinel_audit_anchor_lag_seconds)",
        threshold=900,
        for_="5m",
        summary="Audit checkpoints are not being anchored",
        description="The oldest signed checkpoint of {{ $labels.instance }} has waited {{ $value | humanizeDuration }} "
        "to be published to the Object Lock anchor: until it is, the operator could still rewrite those records "
        "unseen. Strict mode refuses traffic past audit.anchor_lag_max.",
        group="sentinel.audit",
    ),
    Alert(
        name="SentinelAuditAnchorConflict",
        severity="critical",
        query='sum by (job, instance) (increase(sentinel_audit_anchor_failures_total{stage="conflict"}[1h]))',
        threshold=0,
        for_="0m",
        summary="The anchor bucket holds another checkpoint at one of this chain's sizes",
        description="{{ $labels.instance }} could not anchor a checkpoint because the bucket already holds a "
        "different one for the same origin and size: two histories of one chain (a fork, or a rewritten trail). "
        "Run `sentinel audit verify --anchors`.",
        group="sentinel.audit",
    ),
    Alert(
        name="SentinelAuditRefusingRequests",
        severity="critical",
        query=f"sum by (job, instance) (increase(sentinel_audit_refused_total[{W}]))",
        threshold=0,
        for_="0m",
        summary="Requests are refused because the audit trail is unavailable",
        description="Sentinel on {{ $labels.instance }} refused {{ $value | humanize }} requests in 5m with 503 "
        "(strict audit mode) because it could not record them.",
        group="sentinel.audit",
    ),
    Alert(
        name="SentinelAuditVerifyFindings",
        severity="critical",
        query="max by (job, instance, kind) (sentinel_audit_verify_findings)",
        threshold=0,
        for_="0m",
        summary="The audit trail was tampered with: {{ $labels.kind }}",
        description="The scheduled audit verification on {{ $labels.instance }} found {{ $value }} "
        "{{ $labels.kind }} finding(s): stored records or checkpoints no longer match what Sentinel wrote.",
        group="sentinel.audit",
    ),
    Alert(
        name="SentinelAuditVerifyStale",
        severity="warning",
        query="(time() - sentinel_audit_verify_last_success_timestamp_seconds) "
        "/ sentinel_audit_verify_interval_seconds",
        threshold=t.AUDIT_VERIFY_STALE,
        for_="0m",
        summary="The {{ $labels.check }} audit verification has not completed on schedule",
        description="The last {{ $labels.check }} audit verification on {{ $labels.instance }} completed "
        '{{ printf "%.1f" $value }} schedule intervals ago: tampering would go unnoticed until one does.',
        group="sentinel.audit",
    ),
    *_levels(
        "SentinelBackupTooOld",
        t.BACKUP_AGE,
        query="time() - sentinel_backup_last_success_timestamp_seconds",
        for_=("0m", "0m"),
        summary="No recent successful backup of plan {{ $labels.plan }}",
        description="The last successful backup of plan {{ $labels.plan }} finished "
        "{{ $value | humanizeDuration }} ago.",
        group="sentinel.backup",
    ),
    Alert(
        name="SentinelBackupFailing",
        severity="warning",
        query='sum by (job, instance, plan) (increase(sentinel_backup_runs_total{outcome="failure"}[1d]))',
        threshold=0,
        for_="0m",
        summary="Backups of plan {{ $labels.plan }} are failing",
        description="{{ $value | humanize }} backup runs of plan {{ $labels.plan }} failed in the last day.",
        group="sentinel.backup",
    ),
    Alert(
        name="SentinelBackupSnapshotsMissing",
        severity="critical",
        query="max by (job, instance, plan) (sentinel_backup_snapshots_missing + sentinel_backup_snapshots_damaged "
        "+ sentinel_backup_index_cut_back)",
        threshold=0,
        for_="0m",
        summary="Snapshots of plan {{ $labels.plan }} are missing or damaged",
        description="The backup repository of plan {{ $labels.plan }} lacks {{ $value | humanize }} snapshot(s) "
        "that its signed snapshot index names (gone, not authenticating, or the index was cut back): "
        "backups were deleted or tampered with.",
        group="sentinel.backup",
    ),
    *_levels(
        "SentinelRestoreDrillTooOld",
        t.DRILL_AGE,
        query="time() - sentinel_drill_last_success_timestamp_seconds",
        for_=("0m", "0m"),
        summary="No recent passed restore drill for plan {{ $labels.plan }}",
        description="The last passed restore drill of plan {{ $labels.plan }} was {{ $value | humanizeDuration }} ago.",
        group="sentinel.backup",
    ),
    Alert(
        name="SentinelRestoreDrillFailed",
        severity="critical",
        query="sentinel_drill_last_passed",
        threshold=0,
        for_="0m",
        summary="The last restore drill of plan {{ $labels.plan }} failed",
        description="The most recent restore drill of plan {{ $labels.plan }} did not pass: "
        "its backups may not restore.",
        group="sentinel.backup",
        op="==",
    ),
    Alert(
        name="SentinelRestoreDrillRtoMissed",
        severity="warning",
        query="sentinel_drill_last_rto_seconds - sentinel_drill_rto_target_seconds",
        threshold=0,
        for_="0m",
        summary="Restore of plan {{ $labels.plan }} takes longer than its RTO",
        description="The last restore drill of plan {{ $labels.plan }} took {{ $value | humanizeDuration }} more than "
        "the recovery time objective.",
        group="sentinel.backup",
    ),
    Alert(
        name="SentinelRestoreDrillRpoMissed",
        severity="warning",
        query="sentinel_drill_last_rpo_seconds - sentinel_drill_rpo_target_seconds",
        threshold=0,
        for_="0m",
        summary="Restore of plan {{ $labels.plan }} loses more data than its RPO",
        description="The last restore drill of plan {{ $labels.plan }} restored data {{ $value | humanizeDuration }} "
        "older than the recovery point objective allows.",
        group="sentinel.backup",
    ),
]

GROUPS = [
    "sentinel.recording",
    "sentinel.latency",
    "sentinel.errors",
    "sentinel.gpu",
    "sentinel.audit",
    "sentinel.backup",
]


def rule_groups(runbook_base: str = "") -> dict[str, Any]:
    """The rule file as a mapping, in the order Prometheus will read it."""
    groups = []
    for name in GROUPS:
        rules: list[dict[str, Any]] = [{"record": r.record, "expr": r.expr} for r in RECORDING if r.group == name]
        for a in ALERTS:
            if a.group != name:
                continue
            rule: dict[str, Any] = {"alert": a.name, "expr": a.expr}
            if a.for_ != "0m":
                rule["for"] = a.for_
            rule["labels"] = {"severity": a.severity}
            rule["annotations"] = {
                "summary": a.summary,
                "description": a.description,
                "runbook_url": a.runbook_url(runbook_base),
            }
            rules.append(rule)
        groups.append({"name": name, "rules": rules})
    return {"groups": groups}
