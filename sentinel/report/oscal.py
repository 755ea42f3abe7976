"""The report as NIST OSCAL assessment results (JSON, OSCAL 1.2): what GRC tools and auditors' tooling
exchange. Each HIPAA standard the report evidences is a reviewed control; each report section is an
observation carrying its evidence numbers; each finding targets the control of its section (state
`not-satisfied`, with its severity and rule), and each control without a finding is `satisfied`.

UUIDs are derived from the report id (UUID v5), so the same report always converts to the same document.
Control ids are tokens made from the citations (`45 CFR 164.312(b)` -> `hipaa-164.312.b`); the exact
citation is kept in each control's `label` property.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sentinel.report.standards import SECTION_STANDARDS

OSCAL_VERSION = "1.2.1"
NS = "https://github.com/sentinel-ai/sentinel/ns/oscal"
"""The namespace of Sentinel's own property names (OSCAL requires one for names it does not define)."""
SECTIONS = {
    "activity": "Activity",
    "access": "Access to protected content",
    "anomalies": "Anomalies",
    "authentication": "Authentication",
    "encryption": "Encryption",
    "transmission": "Transmission security",
    "integrity": "Integrity of the audit trail",
    "service_levels": "Service levels",
    "backups": "Backups and restore drills",
    "retention": "Retention",
    "phi": "PHI exposure (policy annotations)",
    "scope": "Scope and configuration",
}
_TOKEN = re.compile(r"[^A-Za-z0-9_.-]+")


def control_id(citation: str) -> str:
    """`45 CFR 164.308(a)(7)` -> `hipaa-164.308.a.7`: an OSCAL token naming the standard."""
    body = citation.removeprefix("45 CFR ").replace(")(", ".").replace("(", ".").replace(")", "")
    return "hipaa-" + _TOKEN.sub("-", body).strip(".-")


def _uuid(report_id: str, *parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(("sentinel-report", report_id, *parts))))


def _prop(name: str, value: Any) -> dict[str, str]:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return {"name": _TOKEN.sub("-", name), "ns": NS, "value": text}


def _evidence(section: dict[str, Any]) -> list[dict[str, str]]:
    """The section's own scalar figures (and its totals), as properties: the evidence numbers."""
    values = dict(section)
    values.update({f"totals.{k}": v for k, v in (section.get("totals") or {}).items()})
    return [
        _prop(key, value)
        for key, value in sorted(values.items())
        if isinstance(value, (bool, int, float, str)) and str(value).strip() and len(str(value)) <= 200
    ]


def _sections(report: dict[str, Any]) -> list[str]:
    return [name for name in SECTIONS if isinstance(report.get(name), dict)]


def assessment_results(report: dict[str, Any], *, href: str | None = None) -> dict[str, Any]:
    """The OSCAL `assessment-results` document for a gathered report (`href`: the report file it comes
    with, referenced from each observation's evidence)."""
    rid = report["report_id"]
    generated = report["generated_at"]
    controls = {s["citation"]: control_id(s["citation"]) for s in report["standards"]}
    observations = []
    observation_of: dict[str, str] = {}
    for name in _sections(report):
        oid = observation_of[name] = _uuid(rid, "observation", name)
        section = report[name]
        evidence: dict[str, Any] = {"description": f"Section '{SECTIONS[name]}' of Sentinel compliance report {rid}"}
        if href:
            evidence["href"] = href
        observations.append(
            {
                "uuid": oid,
                "title": SECTIONS[name],
                "description": f"{SECTIONS[name]}: figures counted from the verified audit trail for the period "
                f"{report['period']['from']} to {report['period']['to']}.",
                "props": [
                    _prop("section", name),
                    *[_prop("control", controls[s.citation]) for s in SECTION_STANDARDS.get(name, ())],
                    *_evidence(section),
                ],
                "methods": ["EXAMINE", "TEST"],
                "types": ["control-objective"],
                "collected": generated,
                "relevant-evidence": [evidence],
            }
        )
    findings = []
    failing: set[str] = set()
    for n, finding in enumerate(report["findings"]):
        cited = SECTION_STANDARDS.get(finding["section"], ())
        target = controls[cited[0].citation] if cited else next(iter(controls.values()))
        failing.update(controls[s.citation] for s in cited)
        related = observation_of.get(finding["section"])
        findings.append(
            {
                "uuid": _uuid(rid, "finding", str(n)),
                "title": finding["title"],
                "description": finding["detail"] or finding["title"],
                "props": [
                    _prop("severity", finding["severity"]),
                    _prop("rule", finding["rule"]),
                    _prop("section", finding["section"]),
                    *[_prop("related-control", controls[s.citation]) for s in cited],
                ],
                "target": {
                    "type": "objective-id",
                    "target-id": target,
                    "status": {"state": "not-satisfied"},
                },
                **({"related-observations": [{"observation-uuid": related}]} if related else {}),
            }
        )
    for citation, cid in controls.items():
        if cid in failing:
            continue
        related_sections = [
            name for name, cited in SECTION_STANDARDS.items() if citation in {s.citation for s in cited}
        ]
        findings.append(
            {
                "uuid": _uuid(rid, "satisfied", cid),
                "title": f"{citation}: no exception found",
                "description": f"No finding in the period for the sections evidencing {citation}.",
                "props": [_prop("label", citation)],
                "target": {"type": "objective-id", "target-id": cid, "status": {"state": "satisfied"}},
                "related-observations": [
                    {"observation-uuid": observation_of[name]} for name in related_sections if name in observation_of
                ],
            }
        )
    plan = _uuid(rid, "assessment-plan")
    return {
        "assessment-results": {
            "uuid": _uuid(rid, "assessment-results"),
            "metadata": {
                "title": f"{report['title']} {report['period']['from']} to {report['period']['to']}",
                "last-modified": generated,
                "version": rid,
                "oscal-version": OSCAL_VERSION,
                "props": [_prop("report-id", rid), _prop("verdict", report["summary"]["verdict"])],
                "remarks": f"Generated by {report['generated_by']} with Sentinel {report['sentinel_version']}.",
            },
            "import-ap": {"href": f"#{plan}"},
            "results": [
                {
                    "uuid": _uuid(rid, "result"),
                    "title": f"Compliance report {rid}",
                    "description": f"Verdict: {report['summary']['verdict']}. "
                    f"{report['summary']['calls']} calls; {report['summary']['records_verified']} audit records "
                    "verified.",
                    "start": report["period"]["from"],
                    "end": report["period"]["to"],
                    "props": [_prop("verdict", report["summary"]["verdict"])],
                    "reviewed-controls": {
                        "control-selections": [{"include-controls": [{"control-id": cid} for cid in controls.values()]}]
                    },
                    "observations": observations,
                    "findings": findings,
                }
            ],
            "back-matter": {
                "resources": [
                    {
                        "uuid": plan,
                        "title": "Assessment method",
                        "description": "No separate assessment plan: the rules and checks are those of Sentinel's "
                        "compliance report (docs/report.md, 'Findings: rules and checks'), applied to the audit "
                        "trail of the period.",
                    },
                    *[
                        {
                            "uuid": _uuid(rid, "standard", controls[s["citation"]]),
                            "title": f"{s['citation']} {s['title']}",
                            "description": s["text"],
                            "props": [_prop("control-id", controls[s["citation"]])],
                        }
                        for s in report["standards"]
                    ],
                ]
            },
        }
    }
