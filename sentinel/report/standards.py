"""The HIPAA Security Rule standards each report section evidences, with the rule's own wording."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Standard:
    citation: str
    title: str
    text: str
    """The standard's requirement, as 45 CFR Part 164 words it (abridged)."""


ACCESS_CONTROL = Standard(
    "45 CFR 164.312(a)(1)",
    "Access control",
    "Allow access to ePHI only to those persons or software programs that have been granted access rights; "
    "unique user identification; encryption and decryption (164.312(a)(2)(i), (iv)).",
)
AUDIT_CONTROLS = Standard(
    "45 CFR 164.312(b)",
    "Audit controls",
    "Hardware, software, and/or procedural mechanisms that record and examine activity in information systems "
    "that contain or use ePHI.",
)
INTEGRITY = Standard(
    "45 CFR 164.312(c)(1)",
    "Integrity",
    "Protect ePHI from improper alteration or destruction; electronic mechanisms to corroborate that ePHI has not "
    "been altered or destroyed in an unauthorized manner (164.312(c)(2)).",
)
AUTHENTICATION = Standard(
    "45 CFR 164.312(d)",
    "Person or entity authentication",
    "Verify that a person or entity seeking access to ePHI is the one claimed.",
)
TRANSMISSION = Standard(
    "45 CFR 164.312(e)(1)",
    "Transmission security",
    "Guard against unauthorized access to ePHI transmitted over an electronic communications network; integrity "
    "controls and encryption (164.312(e)(2)).",
)
ACTIVITY_REVIEW = Standard(
    "45 CFR 164.308(a)(1)(ii)(D)",
    "Information system activity review",
    "Regularly review records of information system activity, such as audit logs, access reports, and security "
    "incident tracking reports.",
)
CONTINGENCY = Standard(
    "45 CFR 164.308(a)(7)",
    "Contingency plan",
    "Data backup plan (retrievable exact copies of ePHI), disaster recovery plan (restore any loss of data), "
    "testing and revision procedures (164.308(a)(7)(ii)(A), (B), (D)).",
)
RETENTION = Standard(
    "45 CFR 164.316(b)(2)(i)",
    "Documentation: time limit",
    "Retain required documentation for 6 years from the date of its creation or the date when it last was in "
    "effect, whichever is later.",
)

ALL = (
    ACCESS_CONTROL,
    AUDIT_CONTROLS,
    INTEGRITY,
    AUTHENTICATION,
    TRANSMISSION,
    ACTIVITY_REVIEW,
    CONTINGENCY,
    RETENTION,
)

SECTION_STANDARDS: dict[str, tuple[Standard, ...]] = {
    "scope": (AUDIT_CONTROLS,),
    "activity": (AUDIT_CONTROLS, ACTIVITY_REVIEW, ACCESS_CONTROL),
    "access": (ACCESS_CONTROL, AUDIT_CONTROLS, ACTIVITY_REVIEW),
    "anomalies": (ACTIVITY_REVIEW, AUTHENTICATION),
    "authentication": (AUTHENTICATION,),
    "encryption": (ACCESS_CONTROL, TRANSMISSION),
    "transmission": (TRANSMISSION,),
    "integrity": (INTEGRITY, AUDIT_CONTROLS),
    "service_levels": (ACTIVITY_REVIEW,),
    "backups": (CONTINGENCY,),
    "retention": (RETENTION,),
    "phi": (ACCESS_CONTROL, ACTIVITY_REVIEW),
}
"""Section id -> the standards it is evidence for (the first is the primary one)."""


def cite(section: str) -> list[dict[str, str]]:
    return [{"citation": s.citation, "title": s.title, "text": s.text} for s in SECTION_STANDARDS[section]]
