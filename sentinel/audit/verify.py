"""`verify`: check every instance's hash chain against its signed checkpoints and say what is wrong.

The one verifier `sentinel audit verify`, restore drills, reports and the scheduled checks use. Each
chain is read a page of sequence numbers at a time and walked once (`ChainWalk`, which names the
findings), so memory is bounded by the page, not by the chain. On the embedded store with
`processes` > 1 the pages are read and hashed in worker processes while this one walks them in
order: hashing is the CPU work, the walk is cheap.

Checkpoint findings, from the checkpoints themselves: `bad_signature`, `unknown_key`,
`checkpoint_missing` (the checkpoint before one is missing or altered). Records after the newest
valid checkpoint are counted as `unsealed` (not an error: not yet vouched for by a signature); given
the writer's spool, they are checked against it (`outside_writer`: records the writer never wrote;
`head_mismatch`: the newest record is not the writer's). A record whose stored columns (the embedded
store's search copies of its fields) differ from its signed body is `column_mismatch`, naming them.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.chain import checkpoint_digest, signature_valid
from sentinel.audit.note import Checkpoint, NoteError
from sentinel.audit.record import GENESIS, stored_hashes
from sentinel.audit.signer import TOKEN_KID
from sentinel.audit.spool import WriterCopy
from sentinel.audit.store import AuditStore, ChainLink, StoredRecord
from sentinel.audit.store.embedded import _SPAN, EmbeddedStore, open_read_only, read_chain_page
from sentinel.audit.tlog import CompactRange, leaf_hash
from sentinel.audit.walk import REACH, ChainWalk, CleanRun, Finding, clean_run
from sentinel.periods import iso

__all__ = ["DEFAULT_PAGE", "Finding", "InstanceReport", "PublicKeys", "RecordObserver", "VerifyReport", "verify"]

PublicKeys = Callable[[str], Ed25519PublicKey | None]
Progress = Callable[[int], None]
DEFAULT_PAGE = 50_000
"""Sequence numbers per page: what one worker reads and hashes at a time (~25 MB of links)."""


class RecordObserver(Protocol):
    """Sees each stored record as it is read for verification (the report's statistics and census).

    Made by a picklable factory, once per page (in the worker that reads it), and merged in order."""

    def add(self, record: StoredRecord) -> None: ...

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
    """Records after the newest valid checkpoint (or all of them when there is none)."""
    roots_checked: int = 0
    """Signed Merkle checkpoints (C2SP notes) whose root was recomputed from the chain's records."""
    writer_vouched: bool = False
    """The records after the last checkpoint were checked against the writer's own copy (its spool)."""
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
    writers: Sequence[WriterCopy] = (),
    anchored: Mapping[str, Mapping[int, bytes]] | None = None,
    log_origin: str | None = None,
    anchored_before: float | None = None,
) -> VerifyReport:
    """Verify each chain (or `instance`'s), all of it or the records recorded in [since, until].

    `after` maps an instance to the `(seq, hash)` last verified: only the records after it are read,
    and the first must link to that hash (the scheduled incremental check). Checkpoint signatures
    are always all checked. With `writers` (this data directory's spools), the records of their chains
    after the last checkpoint are checked against the writers' own copies (`outside_writer`,
    `head_mismatch`). With `anchored` (instance -> size -> root), the trees are checked against the
    anchors (`anchor_mismatch`, `truncated`), and, with `anchored_before`, every checkpoint signed before
    that time must be anchored (`not_anchored`). With `log_origin`, every Merkle note must name exactly
    `<log_origin>/<instance>` (an auditor's origin, from the pin file, not the operator's settings)."""
    report = VerifyReport(since=since, until=until)
    observed = observe() if observe is not None else None
    # What each writer had shipped before the chains are planned: all of it must be in the store.
    shipped = {w.instance: await asyncio.to_thread(w.shipped) for w in writers}
    chains = [
        await _plan(store, name, since, until, (after or {}).get(name), page, reach)
        for name in ([instance] if instance else sorted(await store.instances()))
    ]
    for chain in chains:
        chain.anchored = dict((anchored or {}).get(chain.report.instance, {}))
        chain.origin = f"{log_origin}/{chain.report.instance}" if log_origin is not None else None
        chain.anchored_before = anchored_before if anchored is not None else None
    # One pipeline of pages over every chain, in order: the workers never wait between chains.
    jobs = [(chain, lo, min(lo + page - 1, chain.top)) for chain in chains for lo in chain.lows]
    path = store.path if isinstance(store, EmbeddedStore) else None
    if processes > 1 and path is not None and len(jobs) > 1:
        # forkserver, not fork: callers run with threads (SQLite's, the event loop's). At lower CPU
        # priority, like scheduled backups: a check pulled through the admin API must not take the
        # proxy's CPU.
        context = multiprocessing.get_context("forkserver")
        pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_worker_started)
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
            links, part, mismatches, tree = await _read_page(
                store, chain.report.instance, lo, hi, observe, _sizes(chain, lo, hi)
            )
            _take(chain, links, part, mismatches, tree, observed, progress)
    by_instance = {w.instance: w for w in writers}
    planned = {chain.report.instance for chain in chains}
    for name in sorted(set(by_instance) - planned):
        if (instance is None or instance == name) and since is None and until is None and shipped[name]:
            chains.append(_Chain(InstanceReport(name), ChainWalk(name)))  # its writer shipped records: all gone
    for name in sorted(set(anchored or {}) - planned - set(by_instance)):
        if (instance is None or instance == name) and since is None and until is None:
            gone = _Chain(InstanceReport(name), ChainWalk(name), tree=CompactRange())  # anchored, all gone
            gone.anchored = dict((anchored or {})[name])
            chains.append(gone)
    for chain in chains:
        writer = by_instance.get(chain.report.instance)
        if writer is not None and chain.anchored:
            await chain.take_unshipped(writer)
        report.instances.append(chain.finish())
        if writer is not None and chain.walk.to_seq is None:
            # Read after the walk: every record the walk saw had reached the spool before it.
            await _against_writer(chain.report, writer, shipped[writer.instance])
    report.observed = observed
    return report


async def _against_writer(report: InstanceReport, writer: WriterCopy, shipped: int) -> None:
    """The chain's newest record must be the writer's record at its sequence number; the chain links it
    to every record back to the last checkpoint, so this vouches for them all."""
    last, claimed = report.last_seq, report.last_hash
    newest, held = await asyncio.to_thread(writer.at, last or 0)
    # Where a checkpoint already vouches for missing records, the writer names only those after it.
    vouched = max((f.seq_to or 0 for f in report.findings if f.kind == "truncated"), default=last or 0)
    if max(last or 0, vouched) < shipped:
        report.findings.append(
            Finding(
                "truncated",
                report.instance,
                max(last or 0, vouched) + 1,
                f"records up to {shipped} were written and shipped by this instance's writer but are missing",
                seq_to=shipped,
            )
        )
    elif last is None:
        return
    elif last > newest:
        report.findings.append(
            Finding(
                "outside_writer",
                report.instance,
                newest + 1,
                f"records after {newest}, the newest this instance's writer has written, are in the store: "
                "they were appended outside the writer",
                seq_to=last,
            )
        )
    elif held is not None and held != claimed:
        report.findings.append(
            Finding(
                "head_mismatch",
                report.instance,
                last,
                "the chain's newest record differs from the writer's own copy in its spool",
            )
        )
    elif held is not None:
        report.writer_vouched = True


@dataclass
class _Chain:
    """One chain's verification in progress: its report so far, its walk and the pages to read."""

    report: InstanceReport
    walk: ChainWalk
    from_seq: int = 1
    top: int = 0
    lows: list[int] = field(default_factory=list)
    stored_checkpoints: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[int, Checkpoint | str] = field(default_factory=dict)
    """The Merkle checkpoint each stored checkpoint carries, by seq (a string: why it does not parse)."""
    roots: dict[int, bytes] = field(default_factory=dict)
    """Roots the chain's tree must have, by size: those of validly signed checkpoints."""
    tree: CompactRange | None = None
    """The tree over the leaves walked so far (from leaf 0); None where it cannot be known."""
    tree_mismatch: int | None = None
    """The first size whose signed root the records do not give (every later one then differs too)."""
    anchored: dict[int, bytes] = field(default_factory=dict)
    """Roots published to the anchors (outside the operator's reach), by size."""
    anchor_mismatch: int | None = None
    origin: str | None = None
    """The C2SP origin this chain's notes must name exactly (`<log_origin>/<instance>`); None: any ending
    in `/<instance>`."""
    signed_at: dict[int, float] = field(default_factory=dict)
    """When each checkpoint with a valid note (a size in `roots`) was signed, by its signed `time`."""
    anchored_before: float | None = None
    """Checkpoints signed before this time must be anchored (`not_anchored`); None: not checked."""
    pending: int = 0
    """The records after the store's through which the writer's unshipped copies give every anchored root:
    on their way to the store, and vouched for by the anchors themselves."""
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
        instance = self.report.instance
        for seq, note in sorted(self.notes.items()):
            if seq not in valid:
                continue
            if isinstance(note, str):
                self.report.findings.append(Finding("note_invalid", instance, seq, note))
            elif note.size != seq or (
                note.origin != self.origin if self.origin is not None else not note.origin.endswith("/" + instance)
            ):
                detail = f"its Merkle checkpoint names {note.origin} at size {note.size}, not this chain at {seq}"
                self.report.findings.append(Finding("note_invalid", instance, seq, detail))
            else:
                self.roots[seq] = note.root
                self.signed_at[seq] = float(valid[seq].get("time") or 0.0)

    def _check_anchors(self) -> None:
        """What the anchors say against the chain: a root they hold that the records do not give, sizes
        they vouch for beyond the records left (checkpoints deleted locally or not), and checkpoints
        signed long enough ago that are not there."""
        if self.anchored_before is not None:
            due = [s for s, at in self.signed_at.items() if at < self.anchored_before]
            newest = max(self.anchored, default=0)
            if due and max(due) > newest:
                self.report.findings.append(
                    Finding(
                        "not_anchored",
                        self.report.instance,
                        newest + 1,
                        f"the checkpoint at {max(due)} was signed at {iso(self.signed_at[max(due)])}, more than "
                        f"audit.anchor_lag_max before this check, and is not anchored (newest anchored: {newest}): "
                        "anchoring has stalled, or anchored checkpoints were removed or hidden",
                        seq_to=max(due),
                    )
                )
        if not self.anchored:
            return
        report, instance = self.report, self.report.instance
        size = self.anchor_mismatch
        if size is not None:
            later = sum(1 for s in self.anchored if s > size)
            report.findings.append(
                Finding(
                    "anchor_mismatch",
                    instance,
                    size,
                    f"the checkpoint anchored for the first {size} records names a Merkle root their stored "
                    "form does not give: the trail was rewritten after it was anchored"
                    + (f" ({later} later anchored checkpoints differ too)" if later else ""),
                )
            )
            return
        have = self.tree.end if self.tree is not None else None
        if have is None:
            return
        # A range that ends before the head (a report's period) says nothing about the records after it.
        to_seq = self.walk.to_seq
        # Records the writer holds but has not shipped yet are on their way, not gone, as far as their
        # leaves give the anchored roots (`take_unshipped`): the spool is the operator's, the roots are not.
        have_anywhere = max(have, self.pending)
        beyond = [s for s in self.anchored if s > have_anywhere and (to_seq is None or s <= to_seq)]
        if beyond:
            report.findings.append(
                Finding(
                    "truncated",
                    instance,
                    have + 1,
                    f"anchored checkpoints vouch for {max(beyond)} records; the chain holds {have}",
                    seq_to=max(beyond),
                )
            )

    async def take_unshipped(self, writer: WriterCopy) -> None:
        """Extend a copy of the tree with the writer's records after the store's, while they run on
        without a gap, and set `pending` to the last anchored size they reach whose root they all give.
        A spool edited, cut or padded by whoever holds the data directory gives other roots or stops
        short: those anchored sizes stay unaccounted for (`truncated`)."""
        tree = self.tree
        if tree is None or self.anchor_mismatch is not None:
            return
        wanted = [s for s in sorted(self.anchored) if s > tree.end]
        if not wanted:
            return
        rows = await asyncio.to_thread(writer.bodies, tree.end, wanted[-1])
        grown = CompactRange(tree.begin, tree.end, list(tree.subtrees))
        for seq, body in rows:
            if seq != grown.end + 1:
                break
            grown.append(leaf_hash(body))
            root = self.anchored.get(grown.end)
            if root is not None:
                if root != grown.root():
                    return
                self.pending = grown.end

    def take_tree(self, page: TreePage | None) -> None:
        """Extend the chain's tree by a page's leaves, checking the roots of signed checkpoints in it."""
        tree = self.tree
        if tree is None or page is None:
            return
        if page.range.begin != tree.end:
            self.tree = None
            return
        for size, snapshot in sorted(page.snapshots.items()):
            root, anchored = self.roots.get(size), self.anchored.get(size)
            if root is None and anchored is None:
                continue
            at = tree.copy()
            at.extend(snapshot)
            digest = at.root()
            self.report.roots_checked += 1
            if anchored is not None and digest != anchored and self.anchor_mismatch is None:
                self.anchor_mismatch = size
            if root is not None and digest != root and self.tree_mismatch is None:
                self.tree_mismatch = size
            local_done = self.tree_mismatch is not None or not self.roots
            anchors_done = self.anchor_mismatch is not None or not self.anchored
            if local_done and anchors_done:  # every later root would differ too
                self.tree = None
                return
        if page.broken:
            self.tree = None
        else:
            tree.extend(page.range)

    def finish(self) -> InstanceReport:
        report, walk = self.report, self.walk
        report.findings.extend(walk.finish())
        self._check_anchors()
        size = self.tree_mismatch
        if size is not None and not any(f.seq is not None and f.seq <= size for f in report.findings):
            # Not explained by a record found modified, deleted, inserted or moved before it.
            report.findings.append(
                Finding(
                    "tree_mismatch",
                    report.instance,
                    size,
                    f"the Merkle tree of the chain's first {size} records does not have the root its signed "
                    "checkpoint names",
                )
            )
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
        bounds = await _period_bounds(store, instance, since, until, head)
        if bounds is None:  # nothing recorded in the period: nothing to check (nor any tail to miss)
            return _Chain(report, ChainWalk(instance, 1, 0), stored_checkpoints=stored)
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
    chain = _Chain(report, walk, from_seq, top, list(range(from_seq, top + 1, page)), stored, claimed=claimed)
    chain.notes = _notes(stored)
    chain.tree = CompactRange() if from_seq == 1 else None  # a range from the middle: its prefix is not read
    return chain


def _notes(checkpoints: list[dict[str, Any]]) -> dict[int, Checkpoint | str]:
    notes: dict[int, Checkpoint | str] = {}
    for checkpoint in checkpoints:
        seq, note = checkpoint.get("seq"), checkpoint.get("note")
        if isinstance(seq, int) and isinstance(note, str):
            text, sep, _ = note.rpartition("\n\n")
            try:
                notes[seq] = Checkpoint.parse(text + "\n") if sep else "its Merkle checkpoint is not a signed note"
            except NoteError as exc:
                notes[seq] = f"its Merkle checkpoint does not parse: {exc}"
    return notes


async def _period_bounds(
    store: AuditStore, instance: str, since: float | None, until: float | None, head: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The sequence numbers recorded in [since, until]: by the store's index on its `recorded_at`
    column, widened to where the records' own (signed) times say the period begins and ends. An
    edited column can then move no record out of the range a period's verification reads."""
    if head is None:
        return None
    by_column = await store.seq_range(instance, since, until)
    first, last = head
    # Times are in sequence order within a chain (one writer, one clock): bisect on them.
    low = first if since is None else await _bisect(store, instance, first, last + 1, lambda t: t >= since)
    high = last if until is None else await _bisect(store, instance, first, last + 1, lambda t: t > until) - 1
    if low > high:
        return by_column
    if by_column is None:
        return low, high
    return min(low, by_column[0]), max(high, by_column[1])


async def _bisect(store: AuditStore, instance: str, lo: int, hi: int, after: Callable[[float], bool]) -> int:
    """The first sequence number in [lo, hi) whose record's signed time satisfies `after` (hi if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        at = await _time_near(store, instance, mid, hi)
        if at is None or after(at):
            hi = mid
        else:
            lo = mid + 1
    return lo


async def _time_near(store: AuditStore, instance: str, seq: int, hi: int) -> float | None:
    """The signed `recorded_at` of the first record at or after `seq` (below `hi`)."""
    async for page in store.chain_pages(instance, seq, min(seq + 63, hi - 1)):
        for record in page:
            at = record.doc.get("recorded_at")
            return float(at) if isinstance(at, (int, float)) else record.recorded_at
    return None


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
    pages: list[asyncio.Future[PageResult]] = []

    def submit(index: int) -> None:
        chain, lo, hi = jobs[index]
        hashes = {s: digest for s, digest in chain.claimed.items() if lo <= s <= hi}
        instance = chain.report.instance
        sizes = _sizes(chain, lo, hi)
        pages.append(loop.run_in_executor(pool, _page_in_worker, path, instance, lo, hi, observe, hashes, reach, sizes))

    try:
        for index in range(min(ahead, len(jobs))):
            submit(index)
        for chain in chains:
            chain.check_signatures(public_keys)
        for index, (chain, lo, hi) in enumerate(jobs):
            result, part, mismatches, tree = await pages[index]
            pages[index] = _done
            if len(pages) < len(jobs):
                submit(len(pages))
            if isinstance(result, CleanRun):
                if not chain.walk.skip(result):  # what came before needs every link: read them here
                    links, _, _, _ = await _read_page(store, chain.report.instance, lo, hi, None, None)
                    chain.walk.feed(links[len(result.head) :])
                _take(chain, [], part, mismatches, tree, observed, progress, result.count)
            else:
                _take(chain, list(map(ChainLink._make, result)), part, mismatches, tree, observed, progress)
    finally:
        for pending in pages:
            if isinstance(pending, asyncio.Future):
                pending.cancel()


_done: Any = None
"""What a consumed page's slot holds instead: its links are not kept while later pages are walked."""


def _take(
    chain: _Chain,
    links: list[ChainLink],
    part: RecordObserver | None,
    mismatches: list[Mismatch],
    tree: TreePage | None,
    observed: RecordObserver | None,
    progress: Progress | None,
    count: int | None = None,
) -> None:
    chain.walk.feed(links)
    chain.take_tree(tree)
    for seq, doc_id, names in mismatches:
        chain.report.findings.append(
            Finding(
                "column_mismatch",
                chain.report.instance,
                seq,
                f"stored column(s) {', '.join(names)} differ from the signed record",
                doc_id=doc_id,
            )
        )
    if observed is not None and part is not None:
        observed.merge(part)
    if progress is not None:
        progress(len(links) if count is None else count)


Mismatch = tuple[int, str, tuple[str, ...]]
"""A record whose stored columns differ from its signed body: (seq, doc id, column names)."""


@dataclass(slots=True)
class TreePage:
    """A page's part of the chain's Merkle tree: the compact range of its leaves (leaf = seq - 1), and
    the range up to each size a signed checkpoint names in it. One leaf per sequence number (the first
    record claiming it); `broken` where a number is missing (the walk names the gap)."""

    range: CompactRange
    sizes: frozenset[int]
    snapshots: dict[int, CompactRange] = field(default_factory=dict)
    broken: bool = False

    def add(self, seq: int, body: bytes) -> None:
        tree = self.range
        if self.broken or seq <= tree.end:  # a second record claiming a number: not a leaf
            return
        if seq != tree.end + 1:
            self.broken = True
            return
        tree.append(leaf_hash(body))
        if seq in self.sizes:
            self.snapshots[seq] = tree.copy()


def _sizes(chain: _Chain, lo: int, hi: int) -> frozenset[int] | None:
    """The sizes in [lo, hi] whose roots a page must give, or None when the chain's tree is not followed."""
    if chain.tree is None:
        return None
    return frozenset(size for size in (*chain.notes, *chain.anchored) if lo <= size <= hi)


def _look_at(
    records: list[StoredRecord],
    observed: RecordObserver | None,
    links: list[ChainLink],
    mismatches: list[Mismatch],
    tree: TreePage | None,
) -> None:
    """Links, column mismatches, Merkle leaves and the observer's view of one batch of stored records."""
    for r in records:
        claimed, content = stored_hashes(r.body)
        links.append(ChainLink(r.seq, r.doc_id, r.prev_hash, claimed, content, r.recorded_at))
        if r.mismatched and claimed == content:  # (a record whose content changed is named `modified`)
            mismatches.append((r.seq, r.doc_id, r.mismatched))
        if tree is not None:
            tree.add(r.seq, r.body)
        if observed is not None:
            observed.add(r)


def _tree_page(lo: int, sizes: frozenset[int] | None) -> TreePage | None:
    return TreePage(CompactRange(lo - 1, lo - 1), sizes) if sizes is not None else None


async def _read_page(
    store: AuditStore,
    instance: str,
    lo: int,
    hi: int,
    observe: Callable[[], RecordObserver] | None,
    sizes: frozenset[int] | None,
) -> tuple[list[ChainLink], RecordObserver | None, list[Mismatch], TreePage | None]:
    observed = observe() if observe is not None else None
    links: list[ChainLink] = []
    mismatches: list[Mismatch] = []
    tree = _tree_page(lo, sizes)
    async for records in store.chain_pages(instance, lo, hi, documents=observe is not None):
        _look_at(records, observed, links, mismatches, tree)
    return links, observed, mismatches, tree


PageResult = tuple[CleanRun | list[tuple[Any, ...]], RecordObserver | None, list[Mismatch], TreePage | None]


def _worker_started() -> None:
    """A verifier worker: at lower CPU priority, and without the cycle collector, which the parsed
    records (acyclic: freed by reference counting) would only keep triggering."""
    os.nice(10)
    gc.disable()


def _page_in_worker(
    path: str,
    instance: str,
    lo: int,
    hi: int,
    observe: Callable[[], RecordObserver] | None,
    checkpoints: dict[int, str],
    reach: int,
    sizes: frozenset[int] | None,
) -> PageResult:
    """One page, in a worker process, on its own read-only connection to the embedded store. A page
    found whole goes back as a `CleanRun` (its ends only); any other as plain tuples (half the
    pickling work of named ones), for the walk to look at each record."""

    # Synchronous: in a worker the event loop and the store's thread would only cost CPU.
    db = open_read_only(Path(path))
    observed = observe() if observe is not None else None
    links: list[ChainLink] = []
    mismatches: list[Mismatch] = []
    tree = _tree_page(lo, sizes)
    try:
        for low in range(lo, hi + 1, _SPAN):
            records = read_chain_page(db, instance, low, min(low + _SPAN - 1, hi), documents=observe is not None)
            _look_at(records, observed, links, mismatches, tree)
    finally:
        db.close()
    whole = clean_run(links, lo, checkpoints, reach)
    return (whole if whole is not None else list(map(tuple, links))), observed, mismatches, tree


def _check_checkpoints(
    checkpoints: list[dict[str, Any]], public_keys: PublicKeys, report: InstanceReport
) -> dict[int, dict[str, Any]]:
    """Signatures and the checkpoint chain; returns the trustworthy checkpoints by sequence number."""
    valid: dict[int, dict[str, Any]] = {}
    previous: dict[str, Any] | None = None
    in_token: str | None = None  # the first key held in a PKCS#11 token that signed for this chain
    for checkpoint in checkpoints:
        report.checkpoints_checked += 1
        kid = str(checkpoint.get("kid"))
        key = public_keys(kid)
        seq = checkpoint.get("seq")
        if in_token is not None and not kid.startswith(TOKEN_KID):
            # Once a token signs a chain, a key the KEK unwraps signing later is the operator's key at work.
            report.findings.append(
                Finding(
                    "key_downgrade",
                    report.instance,
                    seq,
                    f"signed with {kid}, a key kept beside the data, after {in_token} (held in a PKCS#11 token) "
                    "signed this chain",
                )
            )
        if key is not None and in_token is None and kid.startswith(TOKEN_KID) and signature_valid(checkpoint, key):
            in_token = kid
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
