"""Continuous verification: scheduled checks that the audit trail is still what was verified before.

The incremental check verifies the records written since the last check (the first must link to the
hash verified last) and every checkpoint signature; the full check verifies every chain from its
first record. Both keep the verified head of each chain, the public keys seen and their outcomes in
a small JSON file in the data directory (`StateFile`), which survives restarts and which `/metrics`
reads at scrape time (`sentinel.audit.watch_metrics`). One check runs at a time (a lock beside the file).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sentinel.audit.pins import Pins, trusted_keys
from sentinel.audit.record import stored_hashes
from sentinel.audit.service import stored_public_keys
from sentinel.audit.spool import WriterCopy
from sentinel.audit.store import AuditStore
from sentinel.audit.verify import DEFAULT_PAGE, Finding, verify

log = logging.getLogger("sentinel.audit.watch")

Check = Literal["incremental", "full"]
CHECKS: tuple[Check, ...] = ("incremental", "full")
SKIPPED_EXIT = 3
"""`sentinel audit verify --scheduled` exits with this when another check holds the lock."""

FINDING_KINDS = (
    "modified",
    "deleted",
    "inserted",
    "reordered",
    "truncated",
    "checkpoint_mismatch",
    "bad_signature",
    "unknown_key",
    "checkpoint_missing",
    "key_replaced",
    "key_downgrade",
)
"""Every kind a check reports (`sentinel.audit.walk`, `sentinel.audit.verify`, and `key_replaced` here)."""
_SIGNATURE_KINDS = frozenset({"bad_signature", "unknown_key", "checkpoint_missing", "key_replaced", "key_downgrade"})
_EXAMPLES = 10


class CheckRunning(Exception):
    """Another check holds the state file's lock."""


@dataclass
class CheckRun:
    """One run of a check: when, how many records it verified, what it found or why it could not run."""

    started: float
    finished: float
    outcome: Literal["ok", "findings", "error"]
    records: int = 0
    findings: dict[str, int] = field(default_factory=dict)
    """By kind."""
    examples: list[str] = field(default_factory=list)
    """The first few findings, e.g. `modified node-a:105`."""
    error: str | None = None


@dataclass
class CheckHistory:
    last: CheckRun | None = None
    completed: CheckRun | None = None
    """The last run that got to the end, whatever it found: its findings are the ones `/metrics` shows."""
    records_total: int = 0


@dataclass
class VerifyState:
    scheduled_since: float | None = None
    """When a schedule first ran these checks here: before a first success, the stale alert counts from it."""
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Per chain, the `(seq, hash)` verified last: where the next incremental check starts."""
    keys: dict[str, str] = field(default_factory=dict)
    """Checkpoint public keys (base64) as first seen: a stored key changed later is not trusted."""
    checks: dict[str, CheckHistory] = field(default_factory=dict)

    def history(self, check: str) -> CheckHistory:
        return self.checks.setdefault(check, CheckHistory())

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> VerifyState:
        def run(value: Mapping[str, Any] | None) -> CheckRun | None:
            return CheckRun(**value) if value else None

        return cls(
            scheduled_since=doc.get("scheduled_since"),
            heads={name: (int(seq), str(digest)) for name, (seq, digest) in doc.get("heads", {}).items()},
            keys=dict(doc.get("keys", {})),
            checks={
                check: CheckHistory(run(h.get("last")), run(h.get("completed")), int(h.get("records_total", 0)))
                for check, h in doc.get("checks", {}).items()
            },
        )


class StateFile:
    """The JSON state file: replaced atomically on save, read as empty when missing or unreadable."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> VerifyState:
        try:
            return VerifyState.from_json(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return VerifyState()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # Starting afresh costs one check from each chain's first record; it hides nothing.
            log.warning("audit verification state %s is unreadable (%s); starting afresh", self.path, exc)
            return VerifyState()

    def save(self, state: VerifyState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(state.to_json(), indent=1, sort_keys=True) + "\n")
        os.replace(temporary, self.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while a check runs (the kernel drops it if the process dies); `CheckRunning` if taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckRunning(f"another audit verification holds {handle.name}") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class ContinuousVerification:
    """Runs one check against `store` and records its outcome in `state`; `clock` gives the times recorded.

    Heads: a check moves a chain's head to the last record it verified, except where it found
    something at or after the old head (the incremental check's records, or the head record itself
    gone or rewritten): that head stays, so each check finds the damage again until it is dealt
    with. The full check's findings before the head stay shown until the next full check."""

    def __init__(
        self,
        store: AuditStore,
        state: StateFile,
        *,
        page: int = DEFAULT_PAGE,
        processes: int = 1,
        clock: Callable[[], float] = time.time,
        writers: Sequence[WriterCopy] = (),
        pins: Pins | None = None,
    ) -> None:
        self.store = store
        self.state = state
        self.page = page
        self.processes = processes
        self.clock = clock
        self.writers = writers
        self.pins = pins

    async def run_incremental(self) -> CheckRun:
        return await self.run("incremental")

    async def run_full(self) -> CheckRun:
        return await self.run("full")

    async def run(self, check: Check) -> CheckRun:
        with self.state.lock():
            state = self.state.load()
            started = self.clock()
            try:
                findings, records = await self._check(check, state)
            except Exception as exc:  # recorded: the logs and the stale alert say a check cannot run
                log.exception("audit verification (%s) could not run", check)
                return self._record_error(state, check, started, exc)
            run = CheckRun(
                started,
                self.clock(),
                "findings" if findings else "ok",
                records,
                dict(Counter(f.kind for f in findings)),
                [_describe(f) for f in findings[:_EXAMPLES]],
            )
            history = state.history(check)
            history.last = history.completed = run
            history.records_total += records
            self.state.save(state)
        if findings:
            log.error(
                "audit verification (%s) found %d problem(s) in the audit trail: %s",
                check,
                len(findings),
                "; ".join(run.examples),
            )
        else:
            log.info("audit verification (%s): %d records verified, nothing found", check, records)
        return run

    def could_not_run(self, check: Check, error: BaseException) -> CheckRun:
        """Record that a check could not start (the store unreachable, say)."""
        log.error("audit verification (%s) could not run: %s", check, error)
        with self.state.lock():
            state = self.state.load()
            return self._record_error(state, check, self.clock(), error)

    def _record_error(self, state: VerifyState, check: Check, started: float, error: BaseException) -> CheckRun:
        run = CheckRun(started, self.clock(), "error", error=f"{type(error).__name__}: {error}")
        state.history(check).last = run
        self.state.save(state)
        return run

    async def _check(self, check: Check, state: VerifyState) -> tuple[list[Finding], int]:
        stored = await stored_public_keys(self.store)
        seen = {kid: _raw(key) for kid, key in stored.items()}
        findings = [
            Finding("key_replaced", "", None, f"the stored public key {kid} is not the one seen before")
            for kid, raw in sorted(seen.items())
            if state.keys.get(kid, raw) != raw
        ]
        known = {kid: Ed25519PublicKey.from_public_bytes(base64.b64decode(raw)) for kid, raw in state.keys.items()}
        keys = {**stored, **known}
        if self.pins is not None:  # pinned: only the pins are trusted, and a stored key they do not pin is a finding
            trusted = await trusted_keys(self.store, self.pins)
            keys = dict(trusted.keys)
            findings += [Finding(k.kind, "", None, k.detail) for k in trusted.findings]
        anchors = await self._anchors(state.heads)
        report = await verify(
            self.store,
            keys.get,
            after=state.heads if check == "incremental" else None,
            page=self.page,
            processes=self.processes,
            writers=self.writers,
        )
        held = {f.instance for f in anchors}
        if check == "incremental":
            held |= {f.instance for f in report.findings if f.kind not in _SIGNATURE_KINDS}
        for chain in report.instances:
            if chain.instance not in held and chain.last_seq is not None and chain.last_hash is not None:
                state.heads[chain.instance] = (chain.last_seq, chain.last_hash)
        for kid, raw in seen.items():
            state.keys.setdefault(kid, raw)
        findings += anchors + report.findings
        findings.sort(key=lambda f: (f.instance, *f.key()))
        return findings, report.records_checked

    async def _anchors(self, heads: Mapping[str, tuple[int, str]]) -> list[Finding]:
        """Each chain's verified head must still be there with the hash it had: no chain or tail gone,
        and the head record not rewritten (which a check starting after it could not see)."""
        findings = []
        present = set(await self.store.instances())
        for name, (seq, digest) in sorted(heads.items()):
            if name not in present:
                findings.append(Finding("deleted", name, 1, f"the chain, verified to {seq} before, is gone", seq))
                continue
            claimed = [stored_hashes(r.body)[0] async for page in self.store.chain_pages(name, seq, seq) for r in page]
            if digest in claimed:
                continue
            if claimed:
                findings.append(Finding("modified", name, seq, "the head verified before has a different hash now"))
                continue
            bounds = await self.store.seq_range(name, None, None)
            last = bounds[1] if bounds is not None else 0
            if last < seq:
                findings.append(Finding("truncated", name, last + 1, "records verified before are gone", seq))
            else:
                findings.append(Finding("deleted", name, seq, "the head verified before is gone"))
        return findings


def _raw(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _describe(finding: Finding) -> str:
    if not finding.instance:
        return f"{finding.kind}: {finding.detail}"
    where = finding.instance + (f":{finding.seq}" if finding.seq is not None else "")
    return f"{finding.kind} {where}" + (f"..{finding.seq_to}" if finding.seq_to not in (None, finding.seq) else "")
