"""Sentinel's Grafana dashboards, built with Grafana's official `grafana-foundation-sdk`.

Four dashboards: Overview (traffic, errors, latency, tokens per model), GPU (VRAM, KV cache),
Sentinel internals (added latency, queues, drops, audit spool, shipping and verification) and
Backups & drills.
A panel that shows an alerted indicator takes its coloured thresholds from `thresholds.py`, the
same numbers the alert rules use, and links to the alert's runbook section.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, ReduceDataOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
)
from grafana_foundation_sdk.models.dashboard import (
    Threshold as Step,
)

from sentinel.monitoring import rules as r
from sentinel.monitoring import thresholds as t
from sentinel.monitoring.thresholds import Threshold

PROMETHEUS_UID = "sentinel-prometheus"
"""The Prometheus datasource uid that provisioning creates and the dashboards select by default."""
TAG = "sentinel"
RATE = "$__rate_interval"

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel: what it shows (`queries`), how (`kind`, `unit`) and, if alerted, which alert's thresholds."""

    title: str
    description: str
    queries: Sequence[Query]
    unit: str = "short"
    kind: Literal["timeseries", "stat"] = "timeseries"
    alert: str | None = None
    threshold: Threshold | None = None
    span: int = 12
    mappings: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Stat value mappings: value -> (text, colour)."""

    def __post_init__(self) -> None:
        if (self.alert is None) != (self.threshold is None):
            raise ValueError(f"panel {self.title!r}: an alerted panel needs both the alert and its threshold")


@dataclass(frozen=True)
class Section:
    title: str
    panels: Sequence[Panel]


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    sections: Sequence[Section]


def _quantiles(metric: str, by: str, quantiles: Sequence[float], where: str = "") -> list[Query]:
    selector = f"{{{where}}}" if where else ""
    return [
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{selector}[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in quantiles
    ]


def _alert(name: str) -> str:
    if not any(a.name == name for a in r.ALERTS):
        raise ValueError(f"no alert named {name}")
    return name


OVERVIEW = Board(
    "sentinel-overview",
    "Sentinel / Overview",
    "Model calls through Sentinel: traffic, errors, latency and tokens, per model.",
    [
        Section(
            "Now",
            [
                Panel(
                    "Requests/s",
                    "All requests through Sentinel, every outcome.",
                    [Query(f"sum(rate(sentinel_requests_total[{RATE}]))")],
                    unit="reqps",
                    kind="stat",
                    span=6,
                ),
                Panel(
                    "Error rate (5m)",
                    "Failed over counted requests: client cancellations and caller errors (4xx) excluded.",
                    [Query(f"max({r.ERROR_RATIO})")],
                    unit=t.ERROR_RATIO.unit,
                    kind="stat",
                    alert=_alert("SentinelErrorRateHigh"),
                    threshold=t.ERROR_RATIO,
                    span=6,
                ),
                Panel(
                    "Time to first token p95 (5m)",
                    "Slowest model's p95 time to first token of streamed answers.",
                    [Query(f"max({r.TTFT_P95})")],
                    unit=t.TTFT_P95.unit,
                    kind="stat",
                    alert=_alert("SentinelTimeToFirstTokenHigh"),
                    threshold=t.TTFT_P95,
                    span=6,
                ),
                Panel(
                    "Model server",
                    "Whether every Sentinel instance reaches its model server.",
                    [Query("min(sentinel_upstream_up)")],
                    kind="stat",
                    span=6,
                    mappings={"0": ("down", "red"), "1": ("up", "green")},
                ),
            ],
        ),
        Section(
            "Traffic",
            [
                Panel(
                    "Requests by outcome",
                    "ok, error (upstream failed), aborted (client left), rejected (Sentinel refused).",
                    [Query(f"sum by (outcome) (rate(sentinel_requests_total[{RATE}]))", "{{outcome}}")],
                    unit="reqps",
                ),
                Panel(
                    "Requests by model",
                    "Model names are bounded: configured ones or the first 20 seen, the rest 'other'.",
                    [
                        Query(
                            f"sum by (gen_ai_request_model) (rate(sentinel_requests_total[{RATE}]))",
                            "{{gen_ai_request_model}}",
                        )
                    ],
                    unit="reqps",
                ),
            ],
        ),
        Section(
            "Errors",
            [
                Panel(
                    "Error rate",
                    "Share of counted requests that failed, per Sentinel job (recorded over 5m).",
                    [Query(r.ERROR_RATIO, "{{job}}")],
                    unit=t.ERROR_RATIO.unit,
                    alert=_alert("SentinelErrorRateHigh"),
                    threshold=t.ERROR_RATIO,
                ),
                Panel(
                    "Failures by type",
                    "Interactions that did not end ok, by error type (caller 4xx and cancellations included).",
                    [Query(f"sum by (error_type) (rate(sentinel_errors_total[{RATE}]))", "{{error_type}}")],
                    unit="reqps",
                ),
            ],
        ),
        Section(
            "Latency",
            [
                Panel(
                    "Time to first token",
                    "Streamed answers: request arrival to the first chunk with generated output, by model.",
                    _quantiles("gen_ai_server_time_to_first_token_seconds", "gen_ai_request_model", (0.5, 0.95, 0.99)),
                    unit=t.TTFT_P95.unit,
                    alert=_alert("SentinelTimeToFirstTokenHigh"),
                    threshold=t.TTFT_P95,
                ),
                Panel(
                    "Request duration (successful)",
                    "Request arrival to last byte, by operation; full reasoning answers take tens of seconds.",
                    _quantiles(
                        "gen_ai_server_request_duration_seconds", "gen_ai_operation_name", (0.5, 0.95), 'error_type=""'
                    ),
                    unit="s",
                ),
                Panel(
                    "Embeddings p95",
                    "Successful embeddings calls, p95 over 5m.",
                    [Query(f'{r.ANSWER_P95}{{gen_ai_operation_name="embeddings"}}', "{{job}}")],
                    unit=t.EMBEDDINGS_P95.unit,
                    alert=_alert("SentinelEmbeddingsLatencyHigh"),
                    threshold=t.EMBEDDINGS_P95,
                ),
                Panel(
                    "Non-streamed generation p95",
                    "Successful chat/completions answered in one piece, p95 over 5m.",
                    [
                        Query(
                            f'{r.ANSWER_P95}{{gen_ai_operation_name=~"chat|text_completion",stream="false"}}',
                            "{{gen_ai_operation_name}}",
                        )
                    ],
                    unit=t.UNSTREAMED_GENERATION_P95.unit,
                    alert=_alert("SentinelUnstreamedGenerationSlow"),
                    threshold=t.UNSTREAMED_GENERATION_P95,
                ),
            ],
        ),
        Section(
            "Tokens",
            [
                Panel(
                    "Output tokens/s by model",
                    "Generated tokens as the model server reported them.",
                    [
                        Query(
                            "sum by (gen_ai_request_model) "
                            f'(rate(sentinel_tokens_total{{gen_ai_token_type="output"}}[{RATE}]))',
                            "{{gen_ai_request_model}}",
                        )
                    ],
                    unit="short",
                ),
                Panel(
                    "Tokens/s by type",
                    "Input, output and reasoning tokens (reasoning is part of output where servers report it).",
                    [
                        Query(
                            f"sum by (gen_ai_token_type) (rate(sentinel_tokens_total[{RATE}]))", "{{gen_ai_token_type}}"
                        )
                    ],
                    unit="short",
                ),
            ],
        ),
    ],
)

GPU = Board(
    "sentinel-gpu",
    "Sentinel / GPU",
    "GPU memory and KV-cache pressure from NVML, DCGM, the model server and Ollama. On vLLM and SGLang "
    "VRAM is preallocated (~90 %): watch the KV cache there.",
    [
        Section(
            "Now",
            [
                Panel(
                    "Fullest GPU",
                    "Highest GPU memory utilisation across GPUs and sources.",
                    [Query("max(sentinel_gpu_memory_utilization_ratio)")],
                    unit=t.GPU_MEMORY.unit,
                    kind="stat",
                    alert=_alert("SentinelGpuMemoryHigh"),
                    threshold=t.GPU_MEMORY,
                    span=8,
                ),
                Panel(
                    "Fullest KV cache",
                    "Highest KV-cache usage reported by a model server.",
                    [Query("max(sentinel_gpu_kv_cache_usage_ratio)")],
                    unit=t.KV_CACHE.unit,
                    kind="stat",
                    alert=_alert("SentinelKvCacheSaturated"),
                    threshold=t.KV_CACHE,
                    span=8,
                ),
                Panel(
                    "GPU sources readable",
                    "Sources read successfully over sources configured or probed; absent ones report no values.",
                    [Query("sum(sentinel_gpu_source_up) / count(sentinel_gpu_source_up)")],
                    unit="percentunit",
                    kind="stat",
                    span=8,
                ),
            ],
        ),
        Section(
            "GPU memory",
            [
                Panel(
                    "GPU memory utilisation",
                    "Used over total per GPU (NVML, DCGM); used includes driver-reserved memory.",
                    [Query("sentinel_gpu_memory_utilization_ratio", "{{source}} gpu {{gpu}}")],
                    unit=t.GPU_MEMORY.unit,
                    alert=_alert("SentinelGpuMemoryHigh"),
                    threshold=t.GPU_MEMORY,
                ),
                Panel(
                    "GPU memory used and total",
                    "Bytes per GPU; Ollama reports only its loaded models' VRAM (gpu=all).",
                    [
                        Query("sentinel_gpu_memory_used_bytes", "used {{source}} gpu {{gpu}}"),
                        Query("sentinel_gpu_memory_total_bytes", "total {{source}} gpu {{gpu}}"),
                    ],
                    unit="bytes",
                ),
            ],
        ),
        Section(
            "Model server",
            [
                Panel(
                    "KV-cache usage",
                    "vLLM kv_cache_usage_perc, SGLang token_usage, older llama.cpp kv_cache_usage_ratio.",
                    [Query("sentinel_gpu_kv_cache_usage_ratio", "{{source}}")],
                    unit=t.KV_CACHE.unit,
                    alert=_alert("SentinelKvCacheSaturated"),
                    threshold=t.KV_CACHE,
                ),
                Panel(
                    "Ollama models in VRAM",
                    "Share of loaded models' memory in VRAM; below 100 % layers run on the CPU.",
                    [Query("sentinel_gpu_model_vram_ratio", "{{source}}")],
                    unit="percentunit",
                ),
                Panel(
                    "GPU sources",
                    "1 when a source was read, 0 when it is configured or probed but absent, failing or stale.",
                    [Query("sentinel_gpu_source_up", "{{source}}")],
                    unit="short",
                    span=24,
                ),
            ],
        ),
    ],
)

INTERNALS = Board(
    "sentinel-internals",
    "Sentinel / Internals",
    "What Sentinel itself costs and whether its records get where they should: added latency, queues, "
    "drops, trace export, audit spool and shipping, and whether the audit trail still verifies.",
    [
        Section(
            "Request path",
            [
                Panel(
                    "Added latency",
                    "Time Sentinel spends before the upstream call plus after its response headers.",
                    _quantiles("sentinel_proxy_overhead_seconds", "gen_ai_operation_name", (0.5, 0.99)),
                    unit=t.PROXY_OVERHEAD_P99.unit,
                    alert=_alert("SentinelProxyOverheadHigh"),
                    threshold=t.PROXY_OVERHEAD_P99,
                ),
                Panel(
                    "In flight and model server probe",
                    "Requests being forwarded, and how long the last upstream health probe took.",
                    [
                        Query("sum(sentinel_requests_in_flight)", "in flight"),
                        Query("max(sentinel_upstream_probe_duration_seconds)", "probe seconds"),
                    ],
                    unit="short",
                ),
            ],
        ),
        Section(
            "Recording",
            [
                Panel(
                    "Queues",
                    "Exchanges waiting for the recorder, and records waiting in each sink's queue.",
                    [
                        Query("sum(sentinel_recorder_queue_depth)", "recorder"),
                        Query("sum by (sink) (sentinel_sink_queue_depth)", "sink {{sink}}"),
                    ],
                    unit="short",
                ),
                Panel(
                    "Drops and failures",
                    "Records lost: recorder queue full, sink queue full, sink write failures.",
                    [
                        Query(f"sum(rate(sentinel_recorder_dropped_total[{RATE}]))", "recorder dropped"),
                        Query(f"sum(rate(sentinel_recorder_failures_total[{RATE}]))", "recorder failed"),
                        Query(f"sum by (sink) (rate(sentinel_sink_dropped_total[{RATE}]))", "{{sink}} dropped"),
                        Query(f"sum by (sink) (rate(sentinel_sink_failures_total[{RATE}]))", "{{sink}} failed"),
                    ],
                    unit="ops",
                ),
                Panel(
                    "Records written",
                    "Interactions each sink accepted.",
                    [Query(f"sum by (sink) (rate(sentinel_sink_written_total[{RATE}]))", "{{sink}}")],
                    unit="ops",
                ),
                Panel(
                    "Trace spans",
                    "Spans accepted by the OTLP endpoint and spans dropped, by reason.",
                    [
                        Query(f"sum(rate(sentinel_trace_spans_exported_total[{RATE}]))", "exported"),
                        Query(
                            f"sum by (reason) (rate(sentinel_trace_spans_dropped_total[{RATE}]))", "dropped {{reason}}"
                        ),
                    ],
                    unit="ops",
                ),
            ],
        ),
        Section(
            "Audit trail",
            [
                Panel(
                    "Shipping lag",
                    "Age of the oldest audit record not yet in Elasticsearch (0 when none wait).",
                    [Query("max(sentinel_audit_shipping_lag_seconds)", "lag")],
                    unit=t.AUDIT_SHIPPING_LAG.unit,
                    alert=_alert("SentinelAuditShippingLagHigh"),
                    threshold=t.AUDIT_SHIPPING_LAG,
                ),
                Panel(
                    "Spool",
                    "Audit records written locally and not yet shipped.",
                    [Query("sum(sentinel_audit_spool_records)", "records")],
                    unit="short",
                ),
                Panel(
                    "Shipping",
                    "Records shipped and ship attempts that failed.",
                    [
                        Query(f"sum(rate(sentinel_audit_shipped_total[{RATE}]))", "shipped"),
                        Query(f"sum(rate(sentinel_audit_ship_failures_total[{RATE}]))", "failures"),
                    ],
                    unit="ops",
                ),
                Panel(
                    "Lost and refused (1h)",
                    "Best-effort losses and strict-mode refusals (503) over the last hour.",
                    [
                        Query("sum(increase(sentinel_audit_records_lost_total[1h]))", "lost"),
                        Query("sum(increase(sentinel_audit_refused_total[1h]))", "refused"),
                    ],
                    unit="short",
                ),
                Panel(
                    "Since last signed checkpoint",
                    "Time since the audit chain's last signed checkpoint.",
                    [Query("time() - max(sentinel_audit_last_checkpoint_timestamp_seconds)", "age")],
                    unit="s",
                    span=24,
                ),
            ],
        ),
        Section(
            "Audit verification",
            [
                Panel(
                    "Last check",
                    "Whether the last incremental and the last full check ran to the end and found nothing.",
                    [Query("min by (check) (sentinel_audit_verify_ok)", "{{check}}")],
                    kind="stat",
                    mappings={"0": ("problems", "red"), "1": ("ok", "green")},
                ),
                Panel(
                    "Findings by kind",
                    "What the last completed checks found (the larger count of the two): any one pages.",
                    [Query("max by (kind) (sentinel_audit_verify_findings)", "{{kind}}")],
                    unit="short",
                ),
                Panel(
                    "Since last completed check",
                    "Per check, time since the last one that ran to the end, and how long the last one took; "
                    "a warning past twice the schedule's interval (hourly and weekly by default).",
                    [
                        Query("time() - sentinel_audit_verify_last_success_timestamp_seconds", "{{check}} since"),
                        Query("sentinel_audit_verify_last_duration_seconds", "{{check}} took"),
                    ],
                    unit="s",
                ),
                Panel(
                    "Records verified (1d)",
                    "Records each check read and verified over the last day.",
                    [Query("sum by (check) (increase(sentinel_audit_verify_records_total[1d]))", "{{check}}")],
                    unit="short",
                ),
            ],
        ),
    ],
)

BACKUPS = Board(
    "sentinel-backups",
    "Sentinel / Backups & drills",
    "Offsite backups of models and databases, and restore drills measuring RTO and RPO, per plan.",
    [
        Section(
            "Backups",
            [
                Panel(
                    "Since last successful backup",
                    "Per plan; backups run daily.",
                    [Query("time() - sentinel_backup_last_success_timestamp_seconds", "{{plan}}")],
                    unit=t.BACKUP_AGE.unit,
                    alert=_alert("SentinelBackupTooOld"),
                    threshold=t.BACKUP_AGE,
                ),
                Panel(
                    "Runs (1d)",
                    "Backup runs by outcome over the last day.",
                    [
                        Query(
                            "sum by (plan, outcome) (increase(sentinel_backup_runs_total[1d]))", "{{plan}} {{outcome}}"
                        )
                    ],
                    unit="short",
                ),
                Panel(
                    "Last run",
                    "Duration of the last backup and time since it ran.",
                    [
                        Query("sentinel_backup_last_duration_seconds", "{{plan}} duration"),
                        Query("time() - sentinel_backup_last_run_timestamp_seconds", "{{plan}} since run"),
                    ],
                    unit="s",
                ),
                Panel(
                    "Last size",
                    "Size of the last backup and bytes it uploaded (incremental backups upload less).",
                    [
                        Query("sentinel_backup_last_size_bytes", "{{plan}} size"),
                        Query("sentinel_backup_last_uploaded_bytes", "{{plan}} uploaded"),
                    ],
                    unit="bytes",
                ),
                Panel(
                    "Snapshots missing or damaged",
                    "Per plan, as the last backup, prune, verify, list, restore or drill found them against the signed "
                    "snapshot index. Any missing, damaged or cut back fires SentinelBackupSnapshotsMissing; "
                    "lost = acknowledged with `sentinel backup forget --lost`.",
                    [
                        Query("sentinel_backup_snapshots_missing", "{{plan}} missing"),
                        Query("sentinel_backup_snapshots_damaged", "{{plan}} damaged"),
                        Query("sentinel_backup_index_cut_back", "{{plan}} index cut back"),
                        Query("sentinel_backup_snapshots_lost_acknowledged", "{{plan}} lost (acknowledged)"),
                    ],
                    unit="short",
                    span=24,
                ),
            ],
        ),
        Section(
            "Restore drills",
            [
                Panel(
                    "Since last passed drill",
                    "Per plan; drills run monthly.",
                    [Query("time() - sentinel_drill_last_success_timestamp_seconds", "{{plan}}")],
                    unit=t.DRILL_AGE.unit,
                    alert=_alert("SentinelRestoreDrillTooOld"),
                    threshold=t.DRILL_AGE,
                ),
                Panel(
                    "Last drill",
                    "Whether the last drill passed, per plan, and time since it ran.",
                    [
                        Query("sentinel_drill_last_passed", "{{plan}} passed"),
                        Query("time() - sentinel_drill_last_run_timestamp_seconds", "{{plan}} since run"),
                    ],
                    unit="short",
                ),
                Panel(
                    "RTO: measured and target",
                    "Recovery time of the last drill against the plan's objective.",
                    [
                        Query("sentinel_drill_last_rto_seconds", "{{plan}} measured"),
                        Query("sentinel_drill_rto_target_seconds", "{{plan}} target"),
                    ],
                    unit="s",
                ),
                Panel(
                    "RPO: measured and target",
                    "Age of the restored data in the last drill against the plan's objective.",
                    [
                        Query("sentinel_drill_last_rpo_seconds", "{{plan}} measured"),
                        Query("sentinel_drill_rpo_target_seconds", "{{plan}} target"),
                    ],
                    unit="s",
                ),
            ],
        ),
    ],
)

BOARDS = [OVERVIEW, GPU, INTERNALS, BACKUPS]


def _steps(threshold: Threshold | None) -> list[Step]:
    if threshold is None:  # neutral: Grafana's default would paint everything above 80 red
        return [Step(value=None, color="text")]
    return [
        Step(value=None, color="green"),
        Step(value=threshold.warning, color="orange"),
        Step(value=threshold.critical, color="red"),
    ]


def _panel(panel: Panel, panel_id: int, runbook_base: str) -> timeseries.Panel | stat.Panel:
    builder: timeseries.Panel | stat.Panel
    if panel.kind == "stat":
        builder = (
            stat.Panel()
            .height(5)
            .graph_mode(common.BigValueGraphMode.AREA)
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        )
        if panel.threshold is None and not panel.mappings:
            builder = builder.color_mode(common.BigValueColorMode.NONE)
    else:
        builder = timeseries.Panel().height(8).fill_opacity(10)
        if panel.threshold is not None:
            builder = builder.thresholds_style(
                GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
            )
    builder = (
        builder.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .span(panel.span)
        .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(_steps(panel.threshold)))
    )
    if panel.mappings:
        builder = builder.mappings(
            [
                ValueMap(
                    {
                        value: ValueMappingResult(text=text, color=colour)
                        for value, (text, colour) in panel.mappings.items()
                    }
                )
            ]
        )
    if panel.alert is not None:
        alert = next(a for a in r.ALERTS if a.name == panel.alert)
        builder = builder.links(
            [DashboardLink(f"Runbook: {alert.name}").url(alert.runbook_url(runbook_base)).target_blank(True)]
        )
    for index, query in enumerate(panel.queries):
        target = Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        builder = builder.with_target(target)
    return builder


def build(board: Board, runbook_base: str = "") -> Dashboard:
    dashboard = (
        Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags([TAG])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .timezone(common.TimeZoneBrowser)
        .with_variable(
            DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .current(VariableOption(selected=True, text="Sentinel Prometheus", value=PROMETHEUS_UID))
        )
        .link(
            DashboardLink("Sentinel")
            .type(DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    panel_id = 0
    for section in board.sections:
        panel_id += 1
        dashboard = dashboard.with_row(Row(section.title).id(panel_id))
        for panel in section.panels:
            panel_id += 1
            dashboard = dashboard.with_panel(_panel(panel, panel_id, runbook_base))
    return dashboard


def dashboard_json(board: Board, runbook_base: str = "") -> dict[str, object]:
    """The dashboard model as Grafana stores it (what provisioning uploads and `dashboards/` holds)."""
    import json

    encoded: dict[str, object] = json.loads(json.dumps(build(board, runbook_base).build(), cls=JSONEncoder))
    return encoded
