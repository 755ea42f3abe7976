"""Report sections on protected content: accesses, encryption coverage and keys, chain integrity, PHI."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sentinel.audit.anchor.check import NOT_ANCHORED, AnchorReading
from sentinel.audit.pins import NOT_PINNED, TrustedKeys
from sentinel.periods import iso
from sentinel.report.inputs import ACCESS_EVENTS, ReportInputs
from sentinel.report.integrity import IntegrityResult
from sentinel.report.model import Finding
from sentinel.report.queries import ReportQueries
from sentinel.report.standards import cite


async def access_section(
    inputs: ReportInputs, q: ReportQueries
) -> tuple[dict[str, Any], list[Finding], list[dict[str, Any]]]:
    rules = inputs.settings.report
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


def encryption_section(
    inputs: ReportInputs, integrity: IntegrityResult, now: float
) -> tuple[dict[str, Any], list[Finding]]:
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


def integrity_section(
    integrity: IntegrityResult,
    trusted: TrustedKeys | None = None,
    anchors: AnchorReading | None = None,
    anchors_unread: str | None = None,
) -> tuple[dict[str, Any], list[Finding]]:
    """The chains and sequence ranges verified and what was found in them, the keys the checkpoint
    signatures were checked against (pinned ones, or the store's own, which is a finding itself), and
    the anchors the chains were checked against (`anchors_unread`: why the configured ones could not be)."""
    trusted = trusted if trusted is not None else TrustedKeys({}, None)
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
                "verified": not report.findings,
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
    for k in trusted.findings:
        title = "signing key not pinned" if k.kind == "unpinned_key" else "signing key differs from its pin"
        findings.append(
            Finding("integrity", f"integrity.{k.kind}", "high", f"Audit store: {title}", k.detail, {"kid": k.kid})
        )
    if not trusted.pinned:
        findings.append(
            Finding(
                "integrity",
                "integrity.keys_not_pinned",
                "medium",
                "Checkpoint signing keys not pinned",
                f"The audit chains were {NOT_PINNED}. Pin them: `sentinel keys show --public > pins.txt`, kept "
                "by the auditors, named by audit.pinned_keys or --public-key.",
                {"kids": trusted.to_dict()["trusted_kids"]},
            )
        )
    if anchors_unread is not None:
        findings.append(
            Finding(
                "integrity",
                "integrity.anchors_unreadable",
                "high",
                "Anchored checkpoints could not be read",
                f"The audit chains were not verified against the anchors (audit.anchor): {anchors_unread}",
                {},
            )
        )
    return {
        "standards": cite("integrity"),
        "ok": not integrity.findings and not trusted.findings,
        "findings_total": len(integrity.findings) + len(trusted.findings),
        "records_checked": integrity.records_checked,
        "gaps": sum(1 for f in integrity.findings if f.kind in ("deleted", "truncated")),
        "mismatches": sum(
            1
            for f in integrity.findings
            if f.kind in ("modified", "checkpoint_mismatch", "column_mismatch", "anchor_mismatch")
        ),
        "checkpoint_problems": sum(
            1
            for f in integrity.findings
            if f.kind
            in (
                "bad_signature",
                "unknown_key",
                "key_downgrade",
                "checkpoint_missing",
                "anchor_invalid",
                "anchor_rewritten",
                "not_anchored",
                "timestamp_invalid",
            )
        ),
        "key_problems": len(trusted.findings),
        "keys": trusted.to_dict(),
        "anchors": _anchors(anchors, anchors_unread),
        "scope": "The figures in this report are drawn from the records of the period in these chains and "
        "sequence ranges; each range was verified as stated.",
        "instances": instances,
        "method": "SHA-256 of every record recorded in the period recomputed and linked to its predecessor; "
        "signed checkpoints verified with Ed25519",
    }, findings


def _anchors(anchors: AnchorReading | None, unread: str | None) -> dict[str, Any]:
    """What the chains were verified against outside the operator's reach, for the integrity section."""
    if anchors is None:
        statement = (
            NOT_ANCHORED if unread is None else f"not verified against the anchors, which could not be read: {unread}"
        )
        return {
            "configured": unread is not None,
            "statement": statement,
            "anchored": 0,
            "time_stamped": 0,
            "chains": [],
        }
    read = anchors.to_dict()
    return {"configured": True} | {key: read[key] for key in ("statement", "anchored", "time_stamped", "chains")}


def phi_section(integrity: IntegrityResult) -> dict[str, Any]:
    census = integrity.census
    return {
        "standards": cite("phi"),
        "records_with_phi": census.phi_records,
        "categories": [{"stage": s, "category": c, "count": n} for (s, c), n in sorted(census.phi.items())],
        "policy_actions": [
            {"action": a, "stage": s, "count": n} for (a, s), n in sorted(census.policy_actions.items())
        ],
    }
