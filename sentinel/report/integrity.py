"""Chain verification over the reporting period, with an encryption and PHI census on the way.

`sentinel.audit.verify.verify` does the checking, a page of `verify_window` records at a time, so
memory stays bounded by the page, not by the store. While each stored record passes by for hashing,
the `Census` also counts which sensitive fields are encrypted and under which key id, lists any
stored in clear, and adds up the PHI categories the policy stage annotated — one read of every
record in the period, not several.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sentinel.audit.record import ENCRYPTED_FIELDS
from sentinel.audit.store import AuditStore
from sentinel.audit.verify import DEFAULT_PAGE, InstanceReport, PublicKeys, verify
from sentinel.audit.walk import Finding as ChainFinding
from sentinel.report.model import Period

_KID = re.compile(rb'"kid":"([^"]{1,80})"')
_PHI = re.compile(rb'"phi":(\{(?:[^{}]|\{[^{}]*\})*\})')
_ACTIONS = re.compile(rb'"actions":(\[[^\]]*\])')
_CLEAR_NAMES = [name for name in ENCRYPTED_FIELDS if name != "caller_user"] + ["user", "policy"]
_CLEAR = re.compile(b'"(' + b"|".join(n.encode() for n in _CLEAR_NAMES) + b')":')
"""Keys that must never appear in an interaction's clear metadata (`user` is the caller's end-user id);
`policy` is matched on the same pass to find PHI annotations."""
_CLEAR_REASON = b'"reason":'

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

    def add(self, doc_id: str, kind: str, event_type: str | None, recorded_at: float, body: bytes) -> None:
        self.records[kind] += 1
        fields = body.count(b'"kid":"')
        if fields:
            first, last = _KID.search(body), _KID.match(body, body.rfind(b'"kid":"'))
            kid = first.group(1) if first else b"?"
            if last is not None and last.group(1) == kid:  # one data key per record, as `seal` writes them
                self._seen(kid.decode(errors="replace"), fields, recorded_at)
            else:
                for match in _KID.finditer(body):
                    self._seen(match.group(1).decode(errors="replace"), 1, recorded_at)
        if kind != "event":
            # Keys are sorted in stored records: the interaction's metadata is the last object before "kind".
            start = body.rfind(b'"interaction":{')
            if start < 0:
                return
            clear = []
            if _CLEAR.search(body, start) is not None:  # rare: annotations, or a field in clear
                clear = [
                    "caller_user" if m.group(1) == b"user" else m.group(1).decode()
                    for m in _CLEAR.finditer(body, start)
                    if m.group(1) != b"policy"
                ]
                if body.find(b'"policy":{', start) >= 0:
                    self._policy(body[start:])
        else:
            start = body.find(b'"event":{')
            clear = ["reason"] if event_type == "content_access" and _CLEAR_REASON in body[max(start, 0) :] else []
        if clear:
            self.plaintext += len(clear)
            if len(self.exceptions) < self.max_listed:
                self.exceptions.append({"record": doc_id, "fields": clear})

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

    def _policy(self, tail: bytes) -> None:
        phi = _PHI.search(tail)
        if phi is not None:
            try:
                stages: dict[str, dict[str, int]] = orjson.loads(phi.group(1))
            except orjson.JSONDecodeError:
                stages = {}
            if stages:
                self.phi_records += 1
            for stage, categories in stages.items():
                for category, count in (categories or {}).items():
                    self.phi[(stage, category)] += int(count)
        actions = _ACTIONS.search(tail)
        if actions is not None:
            try:
                items: list[dict[str, Any]] = orjson.loads(actions.group(1))
            except orjson.JSONDecodeError:
                items = []
            for item in items:
                self.policy_actions[(str(item.get("action")), str(item.get("stage")))] += int(item.get("count") or 1)


@dataclass
class IntegrityResult:
    instances: list[InstanceReport]
    census: Census

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
    window: int = DEFAULT_PAGE,
    max_listed: int = 1000,
    processes: int = 1,
    progress: Progress | None = None,
) -> IntegrityResult:
    """Verify every chain's records recorded in the period with the audit trail's verifier, taking the
    census of each record as it is read (in the worker processes that read them, with `processes` > 1)."""
    report = await verify(
        store,
        public_keys,
        since=period.since,
        until=period.until,
        page=window,
        processes=processes,
        progress=progress,
        observe=functools.partial(Census, max_listed=max_listed),
    )
    census = report.observed if isinstance(report.observed, Census) else Census(max_listed=max_listed)
    return IntegrityResult(report.instances, census)
