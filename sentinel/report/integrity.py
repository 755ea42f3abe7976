"""Chain verification over the reporting period, with the report's counts taken on the way.

`sentinel.audit.verify.verify` does the checking, a page of `audit.verify_page` records at a time,
so memory stays bounded by the page, not by the store. Each stored record it reads is handed, parsed
from the very bytes whose hash it checks, to a `PeriodObserver`: the `Census` counts which sensitive
fields are encrypted and under which key id, lists any stored in clear, and adds up the PHI
categories the policy stage annotated; the `Tally` counts the report's statistics. One read of every
record in the period, and every number in the report comes from records that were verified.

Against the anchors (`audit.anchor`), a chain's Merkle tree must be hashed from its first record: a
chain whose period starts later is read once more in full, for the anchored roots alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel.audit.anchor.check import AnchorReading
from sentinel.audit.record import ENCRYPTED_FIELDS
from sentinel.audit.spool import WriterCopy
from sentinel.audit.store import AuditStore, StoredRecord
from sentinel.audit.verify import DEFAULT_PAGE, InstanceReport, PublicKeys, verify
from sentinel.audit.walk import Finding as ChainFinding
from sentinel.report.model import Period
from sentinel.report.tally import Tally

_CLEAR = tuple(name for name in ENCRYPTED_FIELDS if name != "caller_user")
"""Fields of an interaction that must never be stored in its clear metadata (the caller's end-user
id, `caller.user`, is checked too)."""

_CLEAR_SET = frozenset(_CLEAR)

Progress = Callable[[int], None]


@dataclass
class Census:
    """What the records in the period hold: encrypted fields by key id, fields in clear, PHI annotations."""

    max_listed: int = 1000
    records: Counter[str] = field(default_factory=Counter)
    encrypted_by_kid: Counter[str] = field(default_factory=Counter)
    kid_first_seen: dict[str, float] = field(default_factory=dict)
    kid_last_seen: dict[str, float] = field(default_factory=dict)
    plaintext: int = 0
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    phi_records: int = 0
    phi: Counter[tuple[str, str]] = field(default_factory=Counter)
    policy_actions: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def encrypted(self) -> int:
        return sum(self.encrypted_by_kid.values())

    def add(self, record: StoredRecord) -> None:
        doc = record.doc
        kind = str(doc.get("kind", record.kind))
        self.records[kind] += 1
        recorded_at = doc.get("recorded_at", record.recorded_at)
        encrypted = doc.get("encrypted")
        if isinstance(encrypted, dict) and encrypted:
            kids = [str(blob.get("kid")) if isinstance(blob, dict) else "?" for blob in encrypted.values()]
            if kids.count(kids[0]) == len(kids):  # one data key per record, as `seal` writes them
                self._seen(kids[0], len(kids), recorded_at)
            else:
                for kid in kids:
                    self._seen(kid, 1, recorded_at)
        clear: list[str] = []
        if kind != "event":
            interaction = doc.get("interaction")
            if not isinstance(interaction, dict):
                return
            clear = [name for name in _CLEAR if name in interaction] if not _CLEAR_SET.isdisjoint(interaction) else []
            if "user" in (interaction.get("caller") or {}):
                clear.append("caller_user")
            policy = (interaction.get("annotations") or {}).get("policy")
            if isinstance(policy, dict):
                self._policy(policy)
        else:
            event = doc.get("event") or {}
            if event.get("type") == "content_access" and (
                "reason" in event or "reason" in (event.get("details") or {})
            ):
                clear = ["reason"]
        if clear:
            self.plaintext += len(clear)
            if len(self.exceptions) < self.max_listed:
                self.exceptions.append({"record": record.doc_id, "fields": clear})

    def merge(self, other: Census) -> None:
        """Add the census of another window."""
        self.records.update(other.records)
        self.encrypted_by_kid.update(other.encrypted_by_kid)
        for kid, at in other.kid_first_seen.items():
            self.kid_first_seen[kid] = min(at, self.kid_first_seen.get(kid, at))
        for kid, at in other.kid_last_seen.items():
            self.kid_last_seen[kid] = max(at, self.kid_last_seen.get(kid, at))
        self.plaintext += other.plaintext
        self.exceptions.extend(other.exceptions[: max(0, self.max_listed - len(self.exceptions))])
        self.phi_records += other.phi_records
        self.phi.update(other.phi)
        self.policy_actions.update(other.policy_actions)

    def _seen(self, kid: str, fields: int, recorded_at: float) -> None:
        self.encrypted_by_kid[kid] += fields
        if recorded_at < self.kid_first_seen.get(kid, float("inf")):
            self.kid_first_seen[kid] = recorded_at
        if recorded_at > self.kid_last_seen.get(kid, 0.0):
            self.kid_last_seen[kid] = recorded_at

    def _policy(self, policy: dict[str, Any]) -> None:
        stages = policy.get("phi")
        if isinstance(stages, dict) and stages:
            self.phi_records += 1
            for stage, categories in stages.items():
                for category, count in (categories or {}).items():
                    self.phi[(str(stage), str(category))] += int(count)
        actions = policy.get("actions")
        for item in actions if isinstance(actions, list) else []:
            if isinstance(item, dict):
                self.policy_actions[(str(item.get("action")), str(item.get("stage")))] += int(item.get("count") or 1)


@dataclass
class PeriodObserver:
    """What a report takes from each verified record: its census and its tally."""

    census: Census
    tally: Tally

    def add(self, record: StoredRecord) -> None:
        self.census.add(record)
        self.tally.add(record)

    def merge(self, other: PeriodObserver) -> None:
        self.census.merge(other.census)
        self.tally.merge(other.tally)


@dataclass
class IntegrityResult:
    instances: list[InstanceReport]
    census: Census
    tally: Tally

    @property
    def findings(self) -> list[ChainFinding]:
        return [f for report in self.instances for f in report.findings]

    @property
    def records_checked(self) -> int:
        return sum(r.records_checked for r in self.instances)


async def verify_period(
    store: AuditStore,
    public_keys: PublicKeys,
    period: Period,
    *,
    burst_window: int = 300,
    listed: tuple[str, ...] = (),
    late: float = 3600.0,
    window: int = DEFAULT_PAGE,
    max_listed: int = 1000,
    processes: int = 1,
    progress: Progress | None = None,
    writers: Sequence[WriterCopy] = (),
    anchors: AnchorReading | None = None,
) -> IntegrityResult:
    """Verify every chain's records recorded in the period (and up to `late` seconds after it: the
    records of calls that started in it) with the audit trail's verifier, counting the census and the
    statistics of each record as it is read (in the worker processes that read them, with
    `processes` > 1). With `anchors`, every chain is also checked against the roots anchored for it,
    and the anchors' own findings are its findings."""

    report = await verify(
        store,
        public_keys,
        since=period.since,
        until=period.until + late,
        page=window,
        processes=processes,
        progress=progress,
        observe=_Factory(period, burst_window, listed, max_listed),
        writers=writers,
        anchored=anchors.roots if anchors is not None else None,
        log_origin=anchors.log_origin if anchors is not None else None,
        anchored_before=anchors.anchored_before if anchors is not None else None,
    )
    observed = report.observed
    if not isinstance(observed, PeriodObserver):
        observed = _Factory(period, burst_window, listed, max_listed)()
    if anchors is not None:
        await _against_anchors(store, public_keys, anchors, report.instances, window, processes)
    return IntegrityResult(report.instances, observed.census, observed.tally)


ANCHOR_KINDS = ("anchor_mismatch", "truncated", "not_anchored", "note_invalid")
"""What a chain's records say against its anchored roots."""


async def _against_anchors(
    store: AuditStore,
    public_keys: PublicKeys,
    anchors: AnchorReading,
    instances: list[InstanceReport],
    page: int,
    processes: int,
) -> None:
    """Add to `instances` what the anchors say: their own findings, and for each anchored chain whose
    period did not cover it from its first record to its head (so its tree was not followed to every
    anchored size), what a full pass over it finds against the anchored roots."""
    by_name = {report.instance: report for report in instances}

    def chain(name: str) -> InstanceReport:
        if name not in by_name:
            by_name[name] = InstanceReport(name)
            instances.append(by_name[name])
        return by_name[name]

    for name, roots in sorted(anchors.roots.items()):
        head = await store.seq_range(name, None, None)
        period = by_name.get(name)
        if period is not None and period.first_seq == 1 and head is not None and period.last_seq == head[1]:
            continue  # checked in the period's pass
        full = await verify(
            store,
            public_keys,
            instance=name,
            anchored={name: roots},
            page=page,
            processes=processes,
            log_origin=anchors.log_origin,
            anchored_before=anchors.anchored_before,
        )
        report = chain(name)
        have = {(f.kind, f.seq, f.seq_to) for f in report.findings}
        report.findings += [
            f
            for r in full.instances
            for f in r.findings
            if f.kind in ANCHOR_KINDS and (f.kind, f.seq, f.seq_to) not in have
        ]
    for finding in anchors.findings:
        chain(finding.instance).findings.append(finding)


@dataclass(frozen=True)
class _Factory:
    """A picklable `PeriodObserver` factory, for the verifier's worker processes."""

    period: Period
    burst_window: int
    listed: tuple[str, ...]
    max_listed: int

    def __call__(self) -> PeriodObserver:
        census = Census(max_listed=self.max_listed)
        period = self.period
        return PeriodObserver(
            census, Tally(period.since, period.until, self.burst_window, self.listed, self.max_listed)
        )
