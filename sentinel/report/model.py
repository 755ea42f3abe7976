"""The few typed values every report part shares: the period, a finding, severities, the verdict.

The report itself is a JSON-shaped dict (its contract is `report.schema.json`), so the JSON form,
the templates and the schema read the same structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sentinel.periods import iso

Severity = Literal["high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("high", "medium", "low", "info")


@dataclass(frozen=True, slots=True)
class Period:
    """The half-open reporting period [since, until) in Unix seconds."""

    since: float
    until: float

    def __post_init__(self) -> None:
        if not self.since < self.until:
            raise ValueError(f"the period must start before it ends ({iso(self.since)} .. {iso(self.until)})")

    @property
    def seconds(self) -> float:
        return self.until - self.since

    def to_dict(self) -> dict[str, Any]:
        return {"from": iso(self.since), "to": iso(self.until), "since": self.since, "until": self.until}


@dataclass(slots=True)
class Finding:
    """Something an auditor must look at, with the rule or check that raised it and its evidence."""

    section: str
    """The report section that holds the evidence (`integrity`, `backups`, ...)."""
    rule: str
    """The rule or check that raised it, e.g. `anomaly.off_hours`, `integrity.modified`."""
    severity: Severity
    title: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FAILED_VERIFICATION = "audit trail failed verification"


def verdict(findings: Sequence[Finding], *, trail_verified: bool) -> str:
    """The report's verdict. A trail that failed verification is the verdict whatever else was found:
    the report's figures are drawn from it, so "no exceptions found" can never be said of them."""
    if not trail_verified:
        return FAILED_VERIFICATION
    return "exceptions found" if findings else "no exceptions found"
