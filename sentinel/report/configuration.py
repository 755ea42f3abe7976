"""Sections read from the settings in force, never from secrets: scope and configuration summary,
transmission links, retention policy, admin API principals (names and roles, never token digests).

`effective(settings)` is what `sentinel serve` records in the audit trail at start (`settings_effective`
events), so that a report states the settings in force during its period, not those of the process
running the report (see recorded.py)."""

from __future__ import annotations

import hashlib
import ipaddress
import urllib.parse
from typing import Any

import orjson

from sentinel import __version__
from sentinel.config import ConfigError, Settings
from sentinel.report.model import Finding

SETTINGS_EFFECTIVE = "settings_effective"

SIX_YEARS_DAYS = 2190


def _endpoint(url: str | None) -> str | None:
    """scheme://host:port of a URL: no user, password, path or query."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url.split(",")[0].strip())
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uses_elasticsearch(settings: Settings) -> bool:
    return settings.audit.store == "elasticsearch" or (
        settings.audit.store == "auto" and settings.elasticsearch.url is not None
    )


def scope(settings: Settings, instances: list[str]) -> dict[str, Any]:
    return {"sentinel_version": __version__, "instances": instances, **systems(settings)}


def systems(settings: Settings) -> dict[str, Any]:
    """The systems in scope and the non-secret configuration summary."""
    es = uses_elasticsearch(settings)
    backup_targets = []
    for name, target in sorted(settings.backup.targets.items()):
        where = (
            str(settings.resolve_path(target.path))
            if target.kind == "local"
            else f"s3://{target.bucket}/{target.prefix}"
            + (f" at {_endpoint(target.endpoint_url)}" if target.endpoint_url else "")
        )
        backup_targets.append({"name": name, "kind": target.kind, "where": where})
    in_scope = [
        {
            "name": "Sentinel proxy",
            "detail": f"listens on {settings.host}:{settings.port}; admin API on "
            f"{settings.admin_host}:{settings.admin_port}",
        },
        {"name": "Model server (upstream)", "detail": _endpoint(settings.upstream.url) or "not configured"},
        {
            "name": "Audit store",
            "detail": f"Elasticsearch {_endpoint(settings.elasticsearch.url)}, data stream "
            f"{settings.elasticsearch.index_prefix}"
            if es
            else f"embedded SQLite {settings.resolve_path(settings.audit.store_path)}",
        },
        *({"name": f"Backup target {t['name']}", "detail": f"{t['kind']}: {t['where']}"} for t in backup_targets),
    ]
    return {
        "systems": in_scope,
        "configuration": {
            "audit.mode": settings.audit.mode,
            "audit.store": "elasticsearch" if es else "embedded",
            "audit.checkpoint_every": settings.audit.checkpoint_every,
            "audit.checkpoint_interval_s": settings.audit.checkpoint_interval,
            "elasticsearch.retention_days": settings.elasticsearch.retention_days if es else None,
            "elasticsearch.verify_certs": settings.elasticsearch.verify_certs if es else None,
            "policy.file": str(settings.policy.file) if settings.policy.file else None,
            "admin_tokens_file": "configured" if settings.admin_tokens_file else "not configured",
            "tracing.exporting": settings.tracing.exporting,
            "backup.plans": sorted(settings.backup.plans),
            "report.timezone": settings.report.timezone,
            "report.business_hours": f"{settings.report.business_hours[0]:02d}:00-"
            f"{settings.report.business_hours[1]:02d}:00 on weekdays {settings.report.business_days}",
        },
    }


def links(settings: Settings) -> list[dict[str, Any]]:
    """Each network link Sentinel uses: endpoint (no credentials), TLS, certificate verification, same host."""
    out: list[dict[str, Any]] = []

    def link(name: str, url: str | None, verify: bool | None = None) -> None:
        if not url:
            return
        scheme = urllib.parse.urlsplit(url).scheme
        out.append(
            {
                "link": name,
                "endpoint": _endpoint(url),
                "tls": scheme == "https",
                "certificate_verification": verify if scheme == "https" else None,
                "loopback": _loopback(url),
            }
        )

    link("Sentinel -> model server", settings.upstream.url)
    if uses_elasticsearch(settings):
        link("Sentinel -> Elasticsearch", settings.elasticsearch.url, settings.elasticsearch.verify_certs)
    for name, target in sorted(settings.backup.targets.items()):
        if target.kind == "s3":
            link(
                f"Sentinel -> backup target {name}",
                target.endpoint_url or "https://s3.amazonaws.com",
                target.verify_tls,
            )
    if settings.tracing.exporting:
        link("Sentinel -> OTLP collector (no content)", settings.tracing.traces_endpoint())
    return out


def link_findings(links: list[dict[str, Any]]) -> list[Finding]:
    findings = [
        Finding(
            "transmission",
            "transmission.cleartext",
            "medium",
            f"Unencrypted link: {item['link']}",
            f"{item['endpoint']} is reached over plain HTTP and is not on this host; ePHI may cross the network "
            "in clear (164.312(e)(2)(ii))",
            {"link": item["link"], "endpoint": item["endpoint"]},
        )
        for item in links
        if not item["tls"] and not item["loopback"]
    ]
    findings += [
        Finding(
            "transmission",
            "transmission.unverified_tls",
            "medium",
            f"TLS without certificate verification: {item['link']}",
            f"{item['endpoint']} is reached over HTTPS but its certificate is not verified",
            {"link": item["link"]},
        )
        for item in links
        if item["tls"] and item["certificate_verification"] is False
    ]
    return findings


def transmission(settings: Settings) -> tuple[dict[str, Any], list[Finding]]:
    found = links(settings)
    return {"links": found, "field_encryption": FIELD_ENCRYPTION}, link_findings(found)


FIELD_ENCRYPTION = "content fields are encrypted before they leave Sentinel"


def retention_policy(settings: Settings) -> dict[str, Any]:
    es = uses_elasticsearch(settings)
    days = settings.elasticsearch.retention_days if es else None
    policy = (
        f"Elasticsearch ILM policy {settings.elasticsearch.index_prefix}: delete after {days} days"
        if es
        else "embedded store: records are never deleted automatically"
    )
    plans = {
        name: {
            "keep_last": plan.retention.keep_last,
            "keep_daily": plan.retention.keep_daily,
            "keep_weekly": plan.retention.keep_weekly,
            "keep_monthly": plan.retention.keep_monthly,
        }
        for name, plan in sorted(settings.backup.plans.items())
    }
    return {"policy": policy, "retention_days": days, "backup_retention": plans}


def retention(settings: Settings, span: dict[str, Any]) -> tuple[dict[str, Any], list[Finding]]:
    return retention_section(retention_policy(settings), span)


def retention_section(policy: dict[str, Any], span: dict[str, Any]) -> tuple[dict[str, Any], list[Finding]]:
    days = policy["retention_days"]
    findings = []
    if days is not None and days < SIX_YEARS_DAYS:
        findings.append(
            Finding(
                "retention",
                "retention.too_short",
                "medium",
                "Audit records are deleted before six years",
                f"elasticsearch.retention_days is {days}; 164.316(b)(2)(i) asks for {SIX_YEARS_DAYS} days (6 years)",
                {"retention_days": days},
            )
        )
    return {
        "policy": policy["policy"],
        "retention_days": days,
        "required_days": SIX_YEARS_DAYS,
        "store": span,
        "backup_retention": policy["backup_retention"],
    }, findings


def admin_principals(settings: Settings) -> list[dict[str, str]]:
    """Names and roles of the admin API tokens (no digests): who can read the trail through the API."""
    if settings.admin_tokens_file is None:
        return []
    from sentinel.admin.auth import load_tokens

    try:
        tokens = load_tokens(settings.resolve_path(settings.admin_tokens_file))
    except ConfigError as exc:
        return [{"name": "(unreadable tokens file)", "role": str(exc)}]
    return sorted(({"name": p.name, "role": p.role} for p in tokens.values()), key=lambda p: (p["role"], p["name"]))


def effective(settings: Settings) -> dict[str, Any]:
    """The non-secret settings the report's sections state, as recorded in a `settings_effective` event."""
    snapshot = {
        "sentinel_version": __version__,
        **systems(settings),
        "links": links(settings),
        "retention": retention_policy(settings),
        "admin_principals": admin_principals(settings),
    }
    snapshot["digest"] = "sha256:" + hashlib.sha256(orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return snapshot
