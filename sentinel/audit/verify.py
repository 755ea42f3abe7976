"""`verify`: check every instance's hash chain against its signed checkpoints and say what is wrong.

The one verifier `sentinel audit verify`, restore drills, reports and the scheduled checks use. Each
chain is read a page of sequence numbers at a time and walked once (`ChainWalk`, which names the
findings), so memory is bounded by the page, not by the chain. On the embedded store with
`processes` > 1 the pages are read and hashed in worker processes while this one walks them in
order: hashing is the CPU work, the walk is cheap.

Checkpoint findings, from the checkpoints themselves: `bad_signature`, `unknown_key`,
`checkpoint_missing` (the checkpoint before one is missing or altered). Records after the newest
valid checkpoint are counted as `unsealed` (not an error: not yet vouched for by a signature).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.chain import checkpoint_digest, signature_valid
from sentinel.audit.record import GENESIS, stored_hashes
from sentinel.audit.store import AuditStore, ChainLink
from sentinel.audit.store.embedded import _SPAN, EmbeddedStore, open_read_only, read_chain_page
from sentinel.audit.walk import REACH, ChainWalk, CleanRun, Finding, clean_run

__all__ = ["DEFAULT_PAGE", "Finding", "InstanceReport", "PublicKeys", "RecordObserver", "VerifyReport", "verify"]

PublicKeys = Callable[[str], Ed25519PublicKey | None]
Progress = Callable[[int], None]
DEFAULT_PAGE = 50_000
"""Sequence numbers per page: what one worker reads and hashes at a time (~25 MB of links)."""


class RecordObserver(Protocol):
    """Sees each stored record as it is read for verification (the report's encryption census).

    Made by a picklable factory, once per page (in the worker that reads it), and merged in order."""

    def add(self, doc_id: str, kind: str, event_type: str | None, recorded_at: float, body: bytes) -> None: ...

    def merge(self, other: Any) -> None: ...


@dataclass(slots=True)
class InstanceReport:
    instance: str
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    """The claimed hash of the last record checked: where the next incremental check starts."""
    records_checked: int = 0
    checkpoints_checked: int = 0
    last_checkpoint_seq: int | None = None
    unsealed: int = 0
    findings: list[Finding] = field(default_factory=list)


@dataclass(slots=True)
class VerifyReport:
    instances: list[InstanceReport] = field(default_factory=list)
    since: float | None = None
    until: float | None = None
    observed: Any = None
    """The merged `RecordObserver`, when one was given."""

    @property
    def findings(self) -> list[Finding]:
        return [f for report in self.instances for f in report.findings]

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def records_checked(self) -> int:
        return sum(r.records_checked for r in self.instances)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "since": self.since,
            "until": self.until,
            "records_checked": self.records_checked,
            "instances": [asdict(r) for r in self.instances],
        }


async def verify(
    store: AuditStore,
    public_keys: PublicKeys,
    *,
    since: float | None = None,
    until: float | None = None,
    instance: str | None = None,
    after: Mapping[str, tuple[int, str]] | None = None,
    page: int = DEFAULT_PAGE,
    processes: int = 1,
    progress: Progress | None = None,
    observe: Callable[[], RecordObserver] | None = None,
    reach: int = REACH,
) -> VerifyReport:
    """Verify each chain (or `instance`'s), all of it or the records recorded in [since, until].

    `after` maps an instance to the `(seq, hash)` last verified: only the records after it are read,
    and the first must link to that hash (the scheduled incremental check). Checkpoint signatures
    are always all checked."""
    report = VerifyReport(since=since, until=until)
    observed = observe() if observe is not None else None
    chains = [
        await _plan(store, name, since, until, (after or {}).get(name), page, reach)
        for name in ([instance] if instance else sorted(await store.instances()))
    ]
    # One pipeline of pages over every chain, in order: the workers never wait between chains.
    jobs = [(chain, lo, min(lo + page - 1, chain.top)) for chain in chains for lo in chain.lows]
    path = store.path if isinstance(store, EmbeddedStore) else None
    if processes > 1 and path is not None and len(jobs) > 1:
        # forkserver, not fork: callers run with threads (SQLite's, the event loop's). At lower CPU
        # priority, like scheduled backups: a check pulled through the admin API must not take the
        # proxy's CPU.
        context = multiprocessing.get_context("forkserver")
        pool = ProcessPoolExecutor(processes, mp_context=context, initializer=os.nice, initargs=(10,))
        try:
            await _in_workers(
                pool, str(path), jobs, 2 * processes, store, observe, observed, progress, reach, chains, public_keys
            )
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    else:
        for chain in chains:
            chain.check_signatures(public_keys)
        for chain, lo, hi in jobs:
            links, part = await _read_page(store, chain.report.instance, lo, hi, observe)
            _take(chain.walk, links, part, observed, progress)
    for chain in chains:
        report.instances.append(chain.finish())
    report.observed = observed
    return report


@dataclass
class _Chain:
    """One chain's verification in progress: its report so far, its walk and the pages to read."""

    report: InstanceReport
    walk: ChainWalk
    from_seq: int = 1
    top: int = 0
    lows: list[int] = field(default_factory=list)
    stored_checkpoints: list[dict[str, Any]] = field(default_factory=list)
    claimed: dict[int, str] = field(default_factory=dict)
    """Checkpoint hashes by seq as stored, signatures not yet checked ("" where two disagree): what a
    worker compares a page with. A page whole under these is whole under the valid ones, a subset."""

    def check_signatures(self, public_keys: PublicKeys) -> None:
        """Check the checkpoints' signatures and chain; the walk then holds the valid ones in its range."""
        valid = _check_checkpoints(self.stored_checkpoints, public_keys, self.report)
        if valid:
            self.report.last_checkpoint_seq = max(valid)
        walk = self.walk
        walk.checkpoints = {
            s: c for s, c in valid.items() if s >= walk.from_seq and (walk.to_seq is None or s <= walk.to_seq)
        }

    def finish(self) -> InstanceReport:
        report, walk = self.report, self.walk
        report.findings.extend(walk.finish())
        report.records_checked = walk.records
        report.first_seq, report.last_seq, report.last_hash = walk.first_seq, walk.last_seq, walk.last_hash
        if report.last_seq is not None:
            report.unsealed = (
                max(0, report.last_seq - max(report.last_checkpoint_seq, self.from_seq - 1))
                if report.last_checkpoint_seq is not None
                else walk.chosen
            )
        return report


async def _plan(
    store: AuditStore,
    instance: str,
    since: float | None,
    until: float | None,
    start: tuple[int, str] | None,
    page: int,
    reach: int,
) -> _Chain:
    """Work out which sequence numbers of the chain to read, from which hash (signatures: later)."""
    report = InstanceReport(instance)
    stored = await store.checkpoints(instance)
    head = await store.seq_range(instance, None, None)
    if start is not None:
        from_seq, to_seq, start_prev = start[0] + 1, None, start[1]
    elif since is not None or until is not None:
        bounds = await store.seq_range(instance, since, until)
        if bounds is None:
            return _Chain(report, ChainWalk(instance), stored_checkpoints=stored)
        from_seq, to_seq = bounds
        if head is not None and to_seq == head[1]:
            to_seq = None  # the range reaches the head: checkpoints beyond it show truncation
        start_prev = ""
    else:
        from_seq, to_seq, start_prev = 1, None, GENESIS
    if from_seq > 1 and not start_prev:
        async for before in store.chain_pages(instance, from_seq - 1, from_seq - 1):
            start_prev = stored_hashes(before[0].body)[0]
            break
    claimed: dict[int, str] = {}
    for checkpoint in stored:
        seq, digest = checkpoint.get("seq"), str(checkpoint.get("hash"))
        if isinstance(seq, int):
            claimed[seq] = digest if claimed.get(seq, digest) == digest else ""
    walk = ChainWalk(instance, from_seq, to_seq, start_prev, reach=reach)
    top = to_seq if to_seq is not None else (head[1] if head is not None else 0)
    return _Chain(report, walk, from_seq, top, list(range(from_seq, top + 1, page)), stored, claimed)


async def _in_workers(
    pool: ProcessPoolExecutor,
    path: str,
    jobs: list[tuple[_Chain, int, int]],
    ahead: int,
    store: AuditStore,
    observe: Callable[[], RecordObserver] | None,
    observed: RecordObserver | None,
    progress: Progress | None,
    reach: int,
    chains: list[_Chain],
    public_keys: PublicKeys,
) -> None:
    """Pages read and hashed by the workers, `ahead` in flight (bounded memory), walked in order. The
    checkpoint signatures are checked here while the first pages are read."""
    loop = asyncio.get_running_loop()
    pages: list[asyncio.Future[tuple[CleanRun | list[tuple[Any, ...]], RecordObserver | None]]] = []

    def submit(index: int) -> None:
        chain, lo, hi = jobs[index]
        hashes = {s: digest for s, digest in chain.claimed.items() if lo <= s <= hi}
        instance = chain.report.instance
        pages.append(loop.run_in_executor(pool, _page_in_worker, path, instance, lo, hi, observe, hashes, reach))

    try:
        for index in range(min(ahead, len(jobs))):
            submit(index)
        for chain in chains:
            chain.check_signatures(public_keys)
        for index, (chain, lo, hi) in enumerate(jobs):
            result, part = await pages[index]
            pages[index] = _done
            if len(pages) < len(jobs):
                submit(len(pages))
            if isinstance(result, CleanRun):
                if not chain.walk.skip(result):  # what came before needs every link: read them here
                    links, _ = await _read_page(store, chain.report.instance, lo, hi, None)
                    chain.walk.feed(links[len(result.head) :])
                _take(chain.walk, [], part, observed, progress, result.count)
            else:
                _take(chain.walk, list(map(ChainLink._make, result)), part, observed, progress)
    finally:
        for pending in pages:
            if isinstance(pending, asyncio.Future):
                pending.cancel()


_done: Any = None
"""What a consumed page's slot holds instead: its links are not kept while later pages are walked."""


def _take(
    walk: ChainWalk,
    links: list[ChainLink],
    part: RecordObserver | None,
    observed: RecordObserver | None,
    progress: Progress | None,
    count: int | None = None,
) -> None:
    walk.feed(links)
    if observed is not None and part is not None:
        observed.merge(part)
    if progress is not None:
        progress(len(links) if count is None else count)


async def _read_page(
    store: AuditStore, instance: str, lo: int, hi: int, observe: Callable[[], RecordObserver] | None
) -> tuple[list[ChainLink], RecordObserver | None]:
    observed = observe() if observe is not None else None
    links: list[ChainLink] = []
    async for records in store.chain_pages(instance, lo, hi):
        if observed is not None:
            for r in records:
                observed.add(r.doc_id, r.kind, r.event_type, r.recorded_at, r.body)
        links += [ChainLink(r.seq, r.doc_id, r.prev_hash, *stored_hashes(r.body), r.recorded_at) for r in records]
    return links, observed


def _page_in_worker(
    path: str,
    instance: str,
    lo: int,
    hi: int,
    observe: Callable[[], RecordObserver] | None,
    checkpoints: dict[int, str],
    reach: int,
) -> tuple[CleanRun | list[tuple[Any, ...]], RecordObserver | None]:
    """One page, in a worker process, on its own read-only connection to the embedded store. A page
    found whole goes back as a `CleanRun` (its ends only); any other as plain tuples (half the
    pickling work of named ones), for the walk to look at each record."""

    # Synchronous: in a worker the event loop and the store's thread would only cost CPU.
    db = open_read_only(Path(path))
    observed = observe() if observe is not None else None
    links: list[ChainLink] = []
    try:
        for low in range(lo, hi + 1, _SPAN):
            records = read_chain_page(db, instance, low, min(low + _SPAN - 1, hi))
            if observed is not None:
                for r in records:
                    observed.add(r.doc_id, r.kind, r.event_type, r.recorded_at, r.body)
            links += [ChainLink(r.seq, r.doc_id, r.prev_hash, *stored_hashes(r.body), r.recorded_at) for r in records]
    finally:
        db.close()
    whole = clean_run(links, lo, checkpoints, reach)
    return (whole if whole is not None else list(map(tuple, links))), observed


def _check_checkpoints(
    checkpoints: list[dict[str, Any]], public_keys: PublicKeys, report: InstanceReport
) -> dict[int, dict[str, Any]]:
    """Signatures and the checkpoint chain; returns the trustworthy checkpoints by sequence number."""
    valid: dict[int, dict[str, Any]] = {}
    previous: dict[str, Any] | None = None
    for checkpoint in checkpoints:
        report.checkpoints_checked += 1
        key = public_keys(str(checkpoint.get("kid")))
        seq = checkpoint.get("seq")
        if key is None:
            report.findings.append(
                Finding("unknown_key", report.instance, seq, f"signed with unknown key {checkpoint.get('kid')}")
            )
        elif not signature_valid(checkpoint, key):
            report.findings.append(Finding("bad_signature", report.instance, seq, "checkpoint signature is invalid"))
        else:
            expected_prev = checkpoint_digest(previous) if previous is not None else None
            if checkpoint.get("prev_checkpoint") != expected_prev:
                report.findings.append(
                    Finding(
                        "checkpoint_missing",
                        report.instance,
                        seq,
                        "the checkpoint before this one is missing or altered",
                    )
                )
            valid[int(seq)] = checkpoint  # type: ignore[arg-type]
        previous = checkpoint
    return valid
