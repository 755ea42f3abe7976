"""`gather`: every section of a report for one period, as a JSON-shaped dict (see report.schema.json).

Every figure comes from the period's records as the chain verification reads them (`verify_period`:
one read of each record, its hash checked, then counted), never from a store's search columns.
Stated reasons of content accesses are shown only through `ReasonReader`, which the issuer hands
in after it has recorded that access itself (see `issue.py`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from sentinel import __version__
from sentinel.config import Settings
from sentinel.periods import iso
from sentinel.report import anomalies, configuration
from sentinel.report.activity import activity_section, service_levels_section
from sentinel.report.backups import gather_backups
from sentinel.report.configuration import SETTINGS_EFFECTIVE
from sentinel.report.inputs import ACCESS_EVENTS, NoStages, ReasonReader, ReportInputs, Stages
from sentinel.report.integrity import verify_period
from sentinel.report.model import SEVERITIES, verdict
from sentinel.report.protection import access_section, encryption_section, integrity_section, phi_section
from sentinel.report.recorded import settings_in_force
from sentinel.report.standards import ALL as STANDARDS
from sentinel.report.standards import cite
from sentinel.report.tally import TallyQueries

__all__ = ["ACCESS_EVENTS", "NoStages", "ReasonReader", "ReportInputs", "Stages", "gather"]

SCHEMA_VERSION = 1


async def gather(inputs: ReportInputs) -> dict[str, Any]:
    settings, period, stages = inputs.settings, inputs.period, inputs.stages
    started = time.time()
    instances = sorted(await inputs.store.instances())
    late = settings.report.late_records
    total = 0
    for instance in instances:
        bounds = await inputs.store.seq_range(instance, period.since, period.until + late)
        total += (bounds[1] - bounds[0] + 1) if bounds else 0
    stages.begin("verifying audit chains", total)
    # Every number below is counted from the records as they are verified (see integrity.py).
    integrity = await verify_period(
        inputs.store,
        inputs.public_keys,
        period,
        burst_window=settings.report.error_burst_window,
        listed=(*ACCESS_EVENTS, "admin_auth_failed", SETTINGS_EFFECTIVE),
        late=late,
        window=settings.audit.verify_page,
        processes=settings.audit.processes(),
        max_listed=settings.report.max_listed,
        progress=stages.advance,
        writers=inputs.writers,
        anchors=inputs.anchors,
    )
    stages.end()
    queries = TallyQueries(integrity.tally, inputs.store)
    activity, found = await activity_section(inputs, queries)
    access, access_findings, auth_events = await access_section(inputs, queries)
    bins = await queries.latency_bins(period)
    span = activity["span"]
    service_levels, sl_findings = service_levels_section(bins, activity["activity"])
    found += anomalies.auth_failures(settings.report, auth_events)
    encryption, enc_findings = encryption_section(inputs, integrity, started)
    chain_integrity, int_findings = integrity_section(integrity, inputs.trusted, inputs.anchors, inputs.anchors_unread)
    backups, backup_findings = gather_backups(
        settings.backup, settings.resolve_path(settings.backup.state_file), period
    )
    recorded = await queries.events(period, (SETTINGS_EFFECTIVE,), settings.report.max_listed)
    in_force = await settings_in_force(inputs.store, settings, period, recorded)
    stated = in_force.statement(period)
    first = in_force.first
    # Every link in force at some time in the period is stated and checked, each once.
    links: dict[str, dict[str, Any]] = {}
    for snapshot in in_force.snapshots or [first]:
        for link in snapshot.get("links", []):
            links.setdefault(orjson.dumps(link, option=orjson.OPT_SORT_KEYS).decode(), link)
    tx_findings = configuration.link_findings(list(links.values()))
    transmission = {"links": list(links.values()), "field_encryption": configuration.FIELD_ENCRYPTION}
    retention, ret_findings = configuration.retention_section(
        first["retention"], {k: (iso(v) if isinstance(v, float) else v) for k, v in span.items()}
    )
    auth_total = sum(
        anomalies.failed_attempts(d) for d in auth_events if (d.get("event") or {}).get("type") == "admin_auth_failed"
    )
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
            "verdict": verdict(findings, trail_verified=chain_integrity["ok"]),
            "trail_verified": chain_integrity["ok"],
            "integrity_findings": chain_integrity["findings_total"],
            "records_verified": integrity.records_checked,
            "calls": activity["activity"]["totals"]["calls"],
        },
        "scope": {
            "standards": cite("scope"),
            "sentinel_version": first.get("sentinel_version", __version__),
            "instances": instances,
            "systems": first["systems"],
            "configuration": first["configuration"],
            "settings": stated,
        },
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
            "admin_principals": first["admin_principals"],
            "settings": stated,
            "admin_auth_failures": auth_total,
            "caller_identification": "callers are identified by a fingerprint of their API key (key-<12 hex of "
            "SHA-256>); Dify end users by an HMAC blind index",
        },
        "encryption": encryption,
        "transmission": {"standards": cite("transmission"), **transmission, "settings": stated},
        "integrity": chain_integrity,
        "service_levels": service_levels,
        "backups": {"standards": cite("backups"), **backups},
        "retention": {"standards": cite("retention"), **retention, "settings": stated},
        "phi": phi_section(integrity),
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
