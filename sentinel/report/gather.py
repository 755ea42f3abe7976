"""`gather`: every section of a report for one period, as a JSON-shaped dict (see report.schema.json).

Statistics come from store-side aggregations (`ReportQueries`); the chain verification and the
encryption census (`verify_period`) read each record of the period once, concurrently with them.
Stated reasons of content accesses are shown only through `ReasonReader`, which the issuer hands
in after it has recorded that access itself (see `issue.py`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sentinel import __version__
from sentinel.audit.keyring import WrappedKey
from sentinel.audit.store import AuditStore
from sentinel.audit.verify import PublicKeys
from sentinel.config import Settings
from sentinel.monitoring import thresholds
from sentinel.periods import iso
from sentinel.report import anomalies, configuration
from sentinel.report.backups import gather_backups
from sentinel.report.integrity import IntegrityResult, verify_period
from sentinel.report.model import SEVERITIES, Finding, Period
from sentinel.report.queries import Breakdown, LatencyBin, ReportQueries, percentile
from sentinel.report.standards import ALL as STANDARDS
from sentinel.report.standards import cite

SCHEMA_VERSION = 1
ACCESS_EVENTS = ("content_access", "content_export")
ReasonReader = Callable[[list[dict[str, Any]]], Awaitable[dict[str, str]]]
"""Given access event documents, their stated reasons by doc id (decrypting them is itself an access)."""


class Stages(Protocol):
    """Progress of a report being built (the CLI draws it): a stage begins, advances, ends."""

    def begin(self, name: str, total: int | None = None) -> None: ...

    def advance(self, amount: int) -> None: ...

    def end(self) -> None: ...


class NoStages:
    def begin(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class ReportInputs:
    settings: Settings
    queries: ReportQueries
    store: AuditStore
    """Read for chain verification (a second connection to the same store, so it runs alongside the queries)."""
    period: Period
    public_keys: PublicKeys
    keys: list[WrappedKey]
    generated_by: str
    reasons: ReasonReader | None = None
    report_id: str = field(default_factory=lambda: f"rpt-{uuid.uuid4()}")
    stages: Stages = field(default_factory=NoStages)


def _bucket_seconds(period: Period) -> int:
    return 3600 if period.seconds <= 3 * 86400 else 86400


def _marginal(rows: list[Breakdown], key: Callable[[Breakdown], str | None]) -> list[dict[str, Any]]:
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


async def _activity(inputs: ReportInputs) -> tuple[dict[str, Any], list[Finding]]:
    q, period, rules = inputs.queries, inputs.period, inputs.settings.report
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
    step = _bucket_seconds(period)
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
        "by_model": _marginal(breakdown, lambda r: r.model),
        "by_operation": _marginal(breakdown, lambda r: r.operation),
        "by_outcome": _marginal(breakdown, lambda r: r.outcome),
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


def _levels(value: float | None, level: thresholds.Threshold) -> str:
    if value is None:
        return "no data"
    return "alert" if value > level.critical else "warning" if value > level.warning else "normal"


def _service_levels(bins: list[LatencyBin], activity: dict[str, Any]) -> tuple[dict[str, Any], list[Finding]]:
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
        status = _levels(p95, level)
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
        "status": _levels(rate if activity["totals"]["calls"] else None, thresholds.ERROR_RATIO),
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


async def _access(inputs: ReportInputs) -> tuple[dict[str, Any], list[Finding], list[dict[str, Any]]]:
    q, rules = inputs.queries, inputs.settings.report
    counts = await q.event_counts(inputs.period)
    events = await q.events(inputs.period, ACCESS_EVENTS, rules.max_listed)
    failures = await q.events(inputs.period, ("admin_auth_failed",), rules.max_listed)
    reasons = await inputs.reasons(events) if inputs.reasons is not None and events else {}
    listed = []
    findings: list[Finding] = []
    for doc in events:
        event = doc.get("event") or {}
        details = event.get("details") or {}
        has_reason = "reason" in (doc.get("encrypted") or {})
        reason = reasons.get(doc["doc_id"]) if has_reason else None
        listed.append(
            {
                "time": doc.get("@timestamp"),
                "type": event.get("type"),
                "actor": event.get("actor"),
                "record": details.get("record"),
                "interaction": details.get("interaction"),
                "audit_record": doc["doc_id"],
                "reason": reason,
                "reason_state": "shown" if reason is not None else ("withheld" if has_reason else "missing"),
            }
        )
        if not has_reason:
            findings.append(
                Finding(
                    "access",
                    "access.no_reason",
                    "high",
                    "Content accessed without a stated reason",
                    f"{event.get('actor')} accessed {details.get('record')} at {doc.get('@timestamp')}",
                    {"audit_record": doc["doc_id"]},
                )
            )
    total = sum(counts.get(t, 0) for t in ACCESS_EVENTS)
    by_actor: dict[str, int] = defaultdict(int)
    for item in listed:
        by_actor[str(item["actor"])] += 1
    section = {
        "standards": cite("access"),
        "events_total": total,
        "events_listed": len(listed),
        "truncated": total > len(listed),
        "by_actor": [{"actor": a, "events": n} for a, n in sorted(by_actor.items())],
        "events": listed,
        "reasons_policy": "Stated reasons are encrypted in the trail. They are decrypted only for a report "
        "requested by an auditor (or a key holder on the command line), after that access is itself recorded "
        "as a content_access event naming this report; otherwise they are shown as withheld.",
        "event_counts": dict(sorted(counts.items())),
    }
    return section, findings, failures


def _encryption(inputs: ReportInputs, integrity: IntegrityResult, now: float) -> tuple[dict[str, Any], list[Finding]]:
    census = integrity.census
    total = census.encrypted + census.plaintext
    keys = []
    for key in inputs.keys:
        keys.append(
            {
                "kid": key.kid,
                "purpose": key.purpose,
                "kek_id": key.kek_id,
                "created": iso(key.created),
                "age_days": round((now - key.created) / 86400, 1),
                "fields_encrypted_in_period": census.encrypted_by_kid.get(key.kid, 0),
            }
        )
    data_keys = [k for k in inputs.keys if k.purpose == "data"]
    unknown = sorted(set(census.encrypted_by_kid) - {k.kid for k in inputs.keys})
    section = {
        "standards": cite("encryption"),
        "algorithms": [
            {
                "what": "content fields",
                "algorithm": "AES-256-GCM, fresh 96-bit nonce per field, associated data "
                "binding the ciphertext to its record and field",
            },
            {
                "what": "data keys",
                "algorithm": "envelope: each data key wrapped with AES-256-GCM under a "
                "key-encryption key kept outside the store and the backups",
            },
            {"what": "end-user identity", "algorithm": "HMAC-SHA-256 blind index, truncated to 128 bits"},
            {"what": "records", "algorithm": "SHA-256 hash chain per instance"},
            {"what": "checkpoints and reports", "algorithm": "Ed25519 signatures"},
        ],
        "sensitive_fields": total,
        "encrypted_fields": census.encrypted,
        "plaintext_fields": census.plaintext,
        "share_encrypted": census.encrypted / total if total else 1.0,
        "exceptions": census.exceptions,
        "keys": keys,
        "kek_ids": sorted({k.kek_id for k in inputs.keys}),
        "kek_location": str(inputs.settings.resolve_path(inputs.settings.key_file)),
        "last_data_key_created": iso(max(k.created for k in data_keys)) if data_keys else None,
        "unknown_key_ids": unknown,
        "records_examined": sum(census.records.values()),
    }
    findings = []
    if census.plaintext:
        findings.append(
            Finding(
                "encryption",
                "encryption.plaintext",
                "high",
                "Sensitive fields stored in clear",
                f"{census.plaintext} sensitive field(s) in {len(census.exceptions)} record(s) are "
                "not encrypted (listed under encryption exceptions)",
                {"records": [e["record"] for e in census.exceptions[:20]]},
            )
        )
    if unknown:
        findings.append(
            Finding(
                "encryption",
                "encryption.unknown_key",
                "high",
                "Fields encrypted under unknown keys",
                f"key ids {', '.join(unknown)} are not in the store's key table",
                {"kids": unknown},
            )
        )
    return section, findings


def _integrity(integrity: IntegrityResult) -> tuple[dict[str, Any], list[Finding]]:
    instances = []
    findings = []
    for report in integrity.instances:
        instances.append(
            {
                "instance": report.instance,
                "records_checked": report.records_checked,
                "first_seq": report.first_seq,
                "last_seq": report.last_seq,
                "checkpoints_checked": report.checkpoints_checked,
                "last_checkpoint_seq": report.last_checkpoint_seq,
                "unsealed": report.unsealed,
                "findings": [
                    {"kind": f.kind, "seq": f.seq, "seq_to": f.seq_to, "doc_id": f.doc_id, "detail": f.detail}
                    for f in report.findings
                ],
            }
        )
        for f in report.findings:
            where = f"{report.instance} seq {f.seq}" + (f"-{f.seq_to}" if f.seq_to else "")
            findings.append(
                Finding(
                    "integrity",
                    f"integrity.{f.kind}",
                    "high",
                    f"Audit chain: {f.kind}",
                    f"{where}: {f.detail}" + (f" ({f.doc_id})" if f.doc_id else ""),
                    {"instance": report.instance, "seq": f.seq, "doc_id": f.doc_id},
                )
            )
    return {
        "standards": cite("integrity"),
        "ok": not integrity.findings,
        "records_checked": integrity.records_checked,
        "gaps": sum(1 for f in integrity.findings if f.kind in ("deleted", "truncated")),
        "mismatches": sum(1 for f in integrity.findings if f.kind in ("modified", "checkpoint_mismatch")),
        "checkpoint_problems": sum(
            1 for f in integrity.findings if f.kind in ("bad_signature", "unknown_key", "checkpoint_missing")
        ),
        "instances": instances,
        "method": "SHA-256 of every record recorded in the period recomputed and linked to its predecessor; "
        "signed checkpoints verified with Ed25519",
    }, findings


def _phi(integrity: IntegrityResult) -> dict[str, Any]:
    census = integrity.census
    return {
        "standards": cite("phi"),
        "records_with_phi": census.phi_records,
        "categories": [{"stage": s, "category": c, "count": n} for (s, c), n in sorted(census.phi.items())],
        "policy_actions": [
            {"action": a, "stage": s, "count": n} for (a, s), n in sorted(census.policy_actions.items())
        ],
    }


async def gather(inputs: ReportInputs) -> dict[str, Any]:
    settings, period, stages = inputs.settings, inputs.period, inputs.stages
    started = time.time()
    instances = sorted(await inputs.store.instances())
    total = 0
    for instance in instances:
        bounds = await inputs.store.seq_range(instance, period.since, period.until)
        total += (bounds[1] - bounds[0] + 1) if bounds else 0
    stages.begin("verifying audit chains", total)
    verification = asyncio.ensure_future(
        verify_period(
            inputs.store,
            inputs.public_keys,
            period,
            window=settings.report.verify_window,
            max_listed=settings.report.max_listed,
            progress=stages.advance,
        )
    )
    try:
        activity, found = await _activity(inputs)
        access, access_findings, auth_events = await _access(inputs)
        bins = await inputs.queries.latency_bins(period)
        integrity = await verification
    finally:
        verification.cancel()
    stages.end()
    span = activity["span"]
    service_levels, sl_findings = _service_levels(bins, activity["activity"])
    found += anomalies.auth_failures(settings.report, auth_events)
    encryption, enc_findings = _encryption(inputs, integrity, started)
    integrity_section, int_findings = _integrity(integrity)
    backups, backup_findings = gather_backups(
        settings.backup, settings.resolve_path(settings.backup.state_file), period
    )
    transmission, tx_findings = configuration.transmission(settings)
    retention, ret_findings = configuration.retention(
        settings, {k: (iso(v) if isinstance(v, float) else v) for k, v in span.items()}
    )
    auth_total = sum(((d.get("event") or {}).get("type") == "admin_auth_failed") for d in auth_events)
    findings = found + access_findings + enc_findings + int_findings + sl_findings + backup_findings
    findings += tx_findings + ret_findings
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), f.section, f.rule, f.title))
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    return {
        "schema_version": SCHEMA_VERSION,
        "report_id": inputs.report_id,
        "title": "Sentinel compliance report",
        "generated_at": iso(started),
        "generated_by": inputs.generated_by,
        "sentinel_version": __version__,
        "period": period.to_dict(),
        "standards": [{"citation": s.citation, "title": s.title, "text": s.text} for s in STANDARDS],
        "summary": {
            "findings": counts,
            "verdict": "exceptions found" if findings else "no exceptions found",
            "records_verified": integrity.records_checked,
            "calls": activity["activity"]["totals"]["calls"],
        },
        "scope": {"standards": cite("scope"), **configuration.scope(settings, instances)},
        "activity": activity["activity"],
        "access": access,
        "anomalies": {
            "standards": cite("anomalies"),
            "rules": _rules(settings),
            "findings": [f.to_dict() for f in found],
            "admin_auth_failures": auth_total,
        },
        "authentication": {
            "standards": cite("authentication"),
            "admin_principals": configuration.admin_principals(settings),
            "admin_auth_failures": auth_total,
            "caller_identification": "callers are identified by a fingerprint of their API key (key-<12 hex of "
            "SHA-256>); Dify end users by an HMAC blind index",
        },
        "encryption": encryption,
        "transmission": {"standards": cite("transmission"), **transmission},
        "integrity": integrity_section,
        "service_levels": service_levels,
        "backups": {"standards": cite("backups"), **backups},
        "retention": {"standards": cite("retention"), **retention},
        "phi": _phi(integrity),
        "findings": [f.to_dict() for f in findings],
        "sign_off": {
            "statement": "I have reviewed this report, its findings and the evidence it cites.",
            "fields": ["Reviewed by", "Role", "Date", "Signature"],
        },
    }


def _rules(settings: Settings) -> list[dict[str, str]]:
    r = settings.report
    hours = f"{r.business_hours[0]:02d}:00-{r.business_hours[1]:02d}:00"
    return [
        {
            "rule": "anomaly.off_hours",
            "description": f">= {r.off_hours_min} calls by one caller in an hour outside {hours} on weekdays "
            f"{r.business_days} ({r.timezone})",
        },
        {
            "rule": "anomaly.volume_spike",
            "description": f"a caller's hour above max({r.spike_min}, {r.spike_factor:g} x its 90th-percentile hourly "
            "calls)",
        },
        {
            "rule": "anomaly.error_burst",
            "description": f">= {r.error_burst_min} failures and >= {r.error_burst_ratio:.0%} of calls in a "
            f"{r.error_burst_window} s window",
        },
        {
            "rule": "anomaly.new_caller",
            "description": "an API key id first seen in the period (when the store holds earlier interactions)",
        },
        {
            "rule": "anomaly.admin_auth_failed",
            "description": f"every failed admin API authentication, per client; high from {r.auth_failures_high}",
        },
    ]
