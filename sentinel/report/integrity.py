"""Chain verification over the reporting period, in windows, with an encryption and PHI census on the way.

`sentinel.audit.verify.verify_instance` does the checking; this module feeds it one window of
`verify_window` records at a time (each window linked to the record before it), so memory stays
bounded by the window, not by the store. While each stored record passes by for hashing, the
`Census` also counts which sensitive fields are encrypted and under which key id, lists any stored
in clear, and adds up the PHI categories the policy stage annotated — one read of every record
in the period, not several.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.record import ENCRYPTED_FIELDS, stored_hashes
from sentinel.audit.store import AuditStore, ChainLink
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.audit.verify import Finding as ChainFinding
from sentinel.audit.verify import InstanceReport, PublicKeys, verify_instance
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


class _CachedKey:
    """A public key whose verdicts are remembered, so every window does not re-verify every checkpoint."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self._verdicts: dict[tuple[bytes, bytes], bool] = {}

    def public_bytes(self) -> bytes:
        return self._key.public_bytes_raw()

    def verify(self, signature: bytes, data: bytes) -> None:
        verdict = self._verdicts.get((signature, data))
        if verdict is None:
            try:
                self._key.verify(signature, data)
                verdict = True
            except InvalidSignature:
                verdict = False
            self._verdicts[(signature, data)] = verdict
        if not verdict:
            raise InvalidSignature()


class _Window:
    """The part of `AuditStore` that `verify_instance` reads, limited to one window of one chain.

    A window after the first starts one record early (`lo` is then `count_from - 1`): that record,
    already counted by the window before, is verified again as this window's link to it, so a record
    deleted or rewritten at the boundary is found like any other. The census and `records_checked`
    count from `count_from`."""

    def __init__(
        self, rows: _Rows, checkpoints: list[dict[str, Any]], lo: int, hi: int, census: Census, count_from: int
    ) -> None:
        self._rows, self._checkpoints, self.lo, self.hi, self.census = rows, checkpoints, lo, hi, census
        self.count_from = count_from
        self.report_hi = hi
        self.overlap = 0
        """Records yielded from before `count_from` (0 or 1)."""

    async def checkpoints(self, instance: str) -> list[dict[str, Any]]:
        return self._checkpoints

    async def seq_range(self, instance: str, since: float | None, until: float | None) -> tuple[int, int] | None:
        return self.lo, self.report_hi

    async def chain_links(
        self, instance: str, from_seq: int = 1, to_seq: int | None = None
    ) -> AsyncIterator[ChainLink]:
        main = from_seq == self.lo  # not the lookup of the record before the window
        upper = min(to_seq if to_seq is not None else self.hi, self.hi)
        async for seq, doc_id, prev_hash, recorded_at, kind, event_type, body in self._rows(instance, from_seq, upper):
            if main:
                if seq >= self.count_from:
                    self.census.add(doc_id, kind, event_type, recorded_at, body)
                else:
                    self.overlap += 1
            claimed, content = stored_hashes(body)
            yield ChainLink(seq, doc_id, prev_hash, claimed, content, recorded_at)

    async def verify(self, instance: str, public_keys: PublicKeys, since: float | None) -> InstanceReport:
        report = await verify_instance(cast(AuditStore, self), instance, public_keys, since=since)
        report.records_checked -= self.overlap
        if report.last_checkpoint_seq is None:
            report.unsealed -= self.overlap
        return report


Row = tuple[int, str, str, float, str, str | None, bytes]
_Rows = Callable[[str, int, int], AsyncIterator[Row]]


def _embedded_rows(store: EmbeddedStore, span: int = 1000) -> _Rows:
    async def rows(instance: str, lo: int, hi: int) -> AsyncIterator[Row]:
        def fetch(first: int) -> Awaitable[list[tuple[Any, ...]]]:
            # Pages by ranges of sequence numbers, not LIMIT: a second record claiming a sequence number
            # always lands on the same page as the first; and `seq` order alone keeps SQLite on the
            # (instance, seq) index without a sort (ties are ordered by doc id below).
            return store.execute(
                "SELECT seq, doc_id, prev_hash, recorded_at, kind, event_type, CAST(body AS BLOB) FROM records "
                "WHERE instance = ? AND seq >= ? AND seq <= ? ORDER BY seq",
                (instance, first, min(first + span - 1, hi)),
            )

        first = lo
        pending = asyncio.ensure_future(fetch(first))
        try:
            while first <= hi:
                page = await pending
                first += span
                if first <= hi:  # the store's thread reads the next page while this one is hashed and counted
                    pending = asyncio.ensure_future(fetch(first))
                page.sort(key=lambda row: (row[0], row[1]))
                for seq, doc_id, prev_hash, recorded_at, kind, event_type, body in page:
                    yield int(seq), str(doc_id), str(prev_hash or ""), float(recorded_at), kind, event_type, body
        finally:
            pending.cancel()

    return rows


def _document_rows(store: AuditStore) -> _Rows:
    """Any store, through its `chain()` documents (Elasticsearch returns parsed documents)."""
    from sentinel.audit.record import encode

    async def rows(instance: str, lo: int, hi: int) -> AsyncIterator[Row]:
        async for doc in store.chain(instance, lo, hi):
            body = encode(doc) if "hash" in doc else orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
            event_type = (doc.get("event") or {}).get("type")
            yield (
                int(doc["seq"]),
                str(doc["doc_id"]),
                str(doc.get("prev_hash", "")),
                float(doc.get("recorded_at", 0.0)),
                str(doc.get("kind")),
                event_type,
                body,
            )

    return rows


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
    window: int = 50_000,
    max_listed: int = 1000,
    processes: int = 1,
    progress: Progress | None = None,
) -> IntegrityResult:
    """Verify every chain's records recorded in the period (window by window) and take the census.

    Windows are independent (each links to the record before it), so on the embedded store with
    `processes` > 1 and more than one window they are verified in that many worker processes, each
    reading the store itself: hashing a million records is CPU work that one core does in ~20 s.
    """
    rows = _embedded_rows(store) if isinstance(store, EmbeddedStore) else _document_rows(store)
    census = Census(max_listed=max_listed)
    keys: dict[str, _CachedKey | None] = {}

    def cached(kid: str) -> Ed25519PublicKey | None:
        if kid not in keys:
            key = public_keys(kid)
            keys[kid] = _CachedKey(key) if key is not None else None
        return cast(Ed25519PublicKey | None, keys[kid])

    plans: list[tuple[InstanceReport, list[_WindowSpec]]] = []
    for instance in sorted(await store.instances()):
        checkpoints = await store.checkpoints(instance)
        bounds = await store.seq_range(instance, period.since, period.until)
        head = await store.seq_range(instance, None, None)
        windows: list[_WindowSpec] = []
        if bounds is not None:
            first, last = bounds
            for lo in range(first, last + 1, window):
                hi = min(lo + window - 1, last)
                # Where the period reaches the chain's head, checkpoints beyond it show truncation.
                report_hi = 2**62 if hi == last and head is not None and head[1] == last else hi
                start = lo - 1 if lo > first else lo  # overlap the window before by one record (see `_Window`)
                windows.append(_WindowSpec(instance, start, hi, report_hi, checkpoints, lo))
        plans.append((InstanceReport(instance), windows))

    async def in_this_process(spec: _WindowSpec) -> tuple[InstanceReport, Census]:
        part_census = Census(max_listed=max_listed)
        part = _Window(rows, spec.checkpoints, spec.lo, spec.hi, part_census, spec.count_from)
        part.report_hi = spec.report_hi
        return await part.verify(spec.instance, cached, period.since), part_census

    count = sum(len(windows) for _, windows in plans)
    parts: list[Awaitable[tuple[InstanceReport, Census]]] = []
    pool, path = None, ""
    if isinstance(store, EmbeddedStore) and processes > 1 and count > 1:
        path = str(store.path)
        # forkserver, not fork: the report runs in a process with threads (SQLite, the event loop's).
        # At lower CPU priority, like scheduled backups: a report pulled through the admin API must
        # not take the proxy's CPU.
        pool = ProcessPoolExecutor(
            min(processes, count),
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=os.nice,
            initargs=(10,),
        )
    try:
        loop = asyncio.get_running_loop()
        for total, windows in plans:
            if pool is not None:
                raw_keys = _raw_public_keys(windows, cached)
                parts = [
                    loop.run_in_executor(pool, _verify_in_worker, path, spec, raw_keys, period.since, max_listed)
                    for spec in windows
                ]
            else:
                parts = [in_this_process(spec) for spec in windows]
            seen: set[tuple[Any, ...]] = set()
            for part in parts:  # in window order, each awaited as it is needed
                report, part_census = await part
                census.merge(part_census)
                total.records_checked += report.records_checked
                total.first_seq = report.first_seq if total.first_seq is None else total.first_seq
                total.last_seq = report.last_seq if report.last_seq is not None else total.last_seq
                total.checkpoints_checked = report.checkpoints_checked
                total.last_checkpoint_seq = report.last_checkpoint_seq
                # Without a valid checkpoint every record is unsealed: add the windows up; with one,
                # the last window holds the records after it.
                total.unsealed = report.unsealed + (total.unsealed if report.last_checkpoint_seq is None else 0)
                for finding in report.findings:
                    key = (finding.kind, finding.seq, finding.seq_to, finding.doc_id, finding.detail)
                    if key not in seen:
                        seen.add(key)
                        total.findings.append(finding)
                if progress is not None:
                    progress(report.records_checked)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for part in parts:  # after a failure, the windows not awaited: no warnings about them
            if isinstance(part, asyncio.Future) and not part.cancel() and not part.cancelled():
                part.exception()
            elif asyncio.iscoroutine(part):
                part.close()
    return IntegrityResult([total for total, _ in plans], census)


@dataclass(frozen=True)
class _WindowSpec:
    instance: str
    lo: int
    hi: int
    report_hi: int
    checkpoints: list[dict[str, Any]]
    count_from: int


def _raw_public_keys(windows: list[_WindowSpec], cached: PublicKeys) -> dict[str, bytes]:
    """The public keys the windows' checkpoints name, as raw bytes for a worker process."""
    kids = {str(c.get("kid")) for spec in windows[:1] for c in spec.checkpoints}
    out: dict[str, bytes] = {}
    for kid in kids:
        key = cached(kid)
        if key is not None:
            out[kid] = cast(_CachedKey, key).public_bytes()
    return out


def _verify_in_worker(
    path: str, spec: _WindowSpec, raw_keys: dict[str, bytes], since: float | None, max_listed: int
) -> tuple[InstanceReport, Census]:
    """One window, in a worker process, on its own read-only connection to the store."""

    async def run() -> tuple[InstanceReport, Census]:
        store = EmbeddedStore(Path(path), read_only=True)
        await store.open()
        try:
            census = Census(max_listed=max_listed)
            part = _Window(_embedded_rows(store), spec.checkpoints, spec.lo, spec.hi, census, spec.count_from)
            part.report_hi = spec.report_hi
            keys = {kid: _CachedKey(Ed25519PublicKey.from_public_bytes(raw)) for kid, raw in raw_keys.items()}

            def public_key(kid: str) -> Ed25519PublicKey | None:
                return cast(Ed25519PublicKey | None, keys.get(kid))

            return await part.verify(spec.instance, public_key, since), census
        finally:
            await store.close()

    return asyncio.run(run())
