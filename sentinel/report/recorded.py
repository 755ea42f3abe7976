"""The settings in force during a report's period, as the audit trail recorded them.

`sentinel serve` records a `settings_effective` event (configuration.effective: systems, non-secret
configuration, network links, retention policy, admin principals) when it starts, so every change of
settings, which takes a restart, is in the trail. For a period the report takes the last such event at
or before its start (its record checked intact, as report verification checks one) and those recorded
inside it (verified with the period's records). Without any, it says so and falls back to the settings
of the process running the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sentinel.audit.store import AuditStore, SearchQuery, StoreUnavailable
from sentinel.config import Settings
from sentinel.report import configuration
from sentinel.report.configuration import SETTINGS_EFFECTIVE
from sentinel.report.model import Period
from sentinel.report.signing import record_intact


@dataclass
class InForce:
    """The snapshots in force during the period, oldest first (empty: fell back to current settings)."""

    snapshots: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    """For each snapshot: record id, time recorded, digest."""
    current: dict[str, Any] | None = None
    problem: str | None = None

    @property
    def first(self) -> dict[str, Any]:
        return self.snapshots[0] if self.snapshots else self.current or {}

    def statement(self, period: Period) -> dict[str, Any]:
        """What each section that states settings says about where they come from."""
        if not self.snapshots:
            return {
                "source": "current settings",
                "statement": "FALLBACK: no settings_effective event in the audit trail covers this period"
                + (f" ({self.problem})" if self.problem else "")
                + "; these are the settings of the process that ran the report",
                "records": [],
            }
        first = self.records[0]
        statement = f"as recorded in the audit trail at {first['time']} (record {first['record']})"
        if first["time"] > period.to_dict()["from"]:
            statement += "; nothing was recorded for the period before that"
        if len(self.records) > 1:
            statement += f"; changed {len(self.records) - 1} time(s) in the period (listed)"
        if self.problem:
            statement += f"; {self.problem} and is not stated"
        return {"source": "audit trail", "statement": statement, "records": self.records}


def _order(doc: dict[str, Any]) -> tuple[float, str]:
    return float(doc.get("recorded_at") or 0), str(doc["doc_id"])


def _entry(doc: dict[str, Any]) -> dict[str, Any]:
    details = (doc.get("event") or {}).get("details") or {}
    return {"record": doc["doc_id"], "time": doc.get("@timestamp"), "digest": details.get("digest")}


async def settings_in_force(
    store: AuditStore, settings: Settings, period: Period, in_period: list[dict[str, Any]]
) -> InForce:
    """`in_period`: the `settings_effective` event documents verified with the period's records."""
    found = InForce()
    try:
        before = await store.search(
            SearchQuery(kind="event", event_type=SETTINGS_EFFECTIVE, until=period.since, limit=1)
        )
    except StoreUnavailable as exc:  # the report goes on with the current settings, and says why
        before, found.problem = [], f"the audit store could not be searched: {exc}"
    seen = {doc["doc_id"] for doc in before}
    candidates = [*before, *sorted((d for d in in_period if d["doc_id"] not in seen), key=_order)]
    docs = []
    for doc in candidates:
        # A settings record is stated only with the bytes its hash was computed over (the period's
        # verification names an altered one too; this keeps it out of the sections).
        if await record_intact(store, doc):
            docs.append(doc)
        else:
            where = "in force at the start" if doc["doc_id"] in seen else "in the period"
            found.problem = f"the settings record {doc['doc_id']} {where} was altered"
    for doc in docs:
        snapshot = ((doc.get("event") or {}).get("details") or {}).get("settings")
        if isinstance(snapshot, dict):
            found.snapshots.append(snapshot)
            found.records.append(_entry(doc))
    if not found.snapshots:
        found.current = configuration.effective(settings)
    return found
