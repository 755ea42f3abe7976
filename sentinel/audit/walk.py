"""`ChainWalk`: one instance's hash chain checked in a single pass, in memory bounded by the damage.

Records are fed in `(seq, doc_id)` order, any number at a time; the walk keeps the last `reach`
records' hashes and whatever is out of place, never the chain. How the feed is paged cannot change
what it finds: a page of 1 and the whole chain at once give the same findings.

What it finds, each naming the records involved:
- `inserted`: a second record claiming a sequence number (the one that is not the chain's), or a
  record whose link points at no record within `reach` while its predecessor is there;
- `modified`: a record's content no longer matches its hash;
- `deleted`: sequence numbers missing from the chain;
- `reordered`: a record whose position by its links differs from its sequence number (positions are
  counted along the links from the start of the range, as a walk of the chain would);
- `checkpoint_mismatch`: a signed checkpoint's hash differs from the record at its sequence number;
- `truncated`: a signed checkpoint vouches for records after the last one there.

A record whose predecessor is more than `reach` positions away is treated as linking to nothing
(`inserted`, or nothing more where its predecessor's place is empty): moves over such distances are
also seen as the deletions and insertions they leave behind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel.audit.store import ChainLink

REACH = 1024
"""How far (in positions) a record's predecessor is looked for: at least this far, at most twice
(the hashes remembered are trimmed back to `reach` each time they reach twice that)."""


@dataclass(slots=True)
class Finding:
    kind: str
    instance: str
    seq: int | None
    detail: str
    seq_to: int | None = None
    doc_id: str | None = None

    def key(self) -> tuple[Any, ...]:
        return (self.seq if self.seq is not None else -1, self.kind, self.seq_to or 0, self.doc_id or "", self.detail)


@dataclass(slots=True)
class _Placed:
    """A chosen record whose position along the links is not (yet) its sequence number."""

    link: ChainLink
    position: int | None = None
    """Its position along the links; None while its predecessor has not been seen."""
    unlinked: bool = False


HEAD = 4
"""Links of a `CleanRun` fed one by one before the rest is skipped over."""


@dataclass(slots=True)
class CleanRun:
    """A page of records its reader found whole, so the walk need not see each one: sequence numbers
    contiguous from the page's first, one record each, every content matching its hash and linking
    to the record before it, every checkpoint in the page matching. It carries the first `HEAD` links
    and the last `tail` ones (what the walk remembers: 2 x reach + 2), and how many records it holds."""

    head: list[ChainLink]
    count: int
    tail: list[ChainLink]


def tail_length(reach: int) -> int:
    return 2 * reach + 2


def clean_run(links: list[ChainLink], lo: int, checkpoints: dict[int, str], reach: int) -> CleanRun | None:
    """`links` (one page read from `lo`) as a `CleanRun`, or None when anything in it needs a closer look."""
    count = len(links)
    if count < HEAD + tail_length(reach) + 2 or links[0].seq != lo or links[-1].seq != lo + count - 1:
        return None
    prev, seq = links[0].prev_hash, lo
    for link in links:
        if link.seq != seq or link.claimed_hash != link.content_hash or link.prev_hash != prev:
            return None
        prev, seq = link.claimed_hash, seq + 1
    if any(links[seq - lo].claimed_hash != digest for seq, digest in checkpoints.items() if lo <= seq < lo + count):
        return None
    return CleanRun(links[:HEAD], count, links[-tail_length(reach) :])


@dataclass
class ChainWalk:
    """Check one chain over [from_seq, to_seq]; `start_prev` is the hash the first record must link to
    (the record before the range, or the genesis hash), `checkpoints` the valid signed ones by seq."""

    instance: str
    from_seq: int = 1
    to_seq: int | None = None
    start_prev: str = ""
    checkpoints: dict[int, dict[str, Any]] = field(default_factory=dict)
    reach: int = REACH
    findings: list[Finding] = field(default_factory=list)
    records: int = 0
    """Records read, every one claiming a sequence number in the range (duplicates included)."""
    chosen: int = 0
    """Sequence numbers present (one record each: the chain's own)."""
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None

    def __post_init__(self) -> None:
        self._groups: deque[list[ChainLink]] = deque()
        self._prev: ChainLink | None = None  # the chosen record at the previous sequence number
        self._expected = self.from_seq
        self._recent: dict[str, int] = {}  # claimed hash -> seq, last `reach` chosen records
        self._order: deque[tuple[int, str]] = deque()
        self._placed: dict[str, _Placed] = {}  # out of place (or undecided) records by claimed hash
        self._waiting: dict[str, list[_Placed]] = {}  # by the hash they link to
        self._unlinked_seqs: set[int] = set()
        self._undecided: set[int] = set()  # seqs whose record waits for its position
        self._candidates: dict[int, str] = {}  # unlinked records whose verdict waits on the record before
        self._present: set[int] = set()  # seqs present among the undecided records' neighbours
        if self.from_seq > 1 and self.start_prev:
            self._remember(self.from_seq - 1, self.start_prev)

    # Feeding.

    def feed(self, links: Sequence[ChainLink]) -> None:
        self.records += len(links)
        groups = self._groups
        for link in links:
            if groups and groups[-1][0].seq == link.seq:
                groups[-1].append(link)
                continue
            groups.append([link])
            if len(groups) == 3:
                self._settle(groups.popleft(), groups[0])

    def skip(self, run: CleanRun) -> bool:
        """Take a whole page without looking at each record: the same state as `feed` would leave.

        Feeds the run's head first (it joins the page to the one before); returns False, with the head
        fed, when what came before is not in order (something waits, or is out of place): then the
        caller feeds the rest of the page's links."""
        self.feed(run.head)
        groups, prev = self._groups, self._prev
        reach = self.reach
        first = run.head[0].seq
        if (
            self._waiting
            or self._undecided
            or self._candidates
            or prev is None
            or prev.seq != first + HEAD - 3
            or len(groups) != 2
            or (self._placed.get(prev.claimed_hash) or _Placed(prev, prev.seq)).position != prev.seq
            or len(run.tail) < tail_length(reach)
        ):
            return False
        last = first + run.count - 1
        settled_to = last - 2  # the last two stay unsettled, as after `feed`
        by_seq = {link.seq: link for link in run.tail}
        # The hashes remembered, trimmed on the same cadence as `_settle` trims them.
        order, present = self._order, self._present
        for seq in range(prev.seq + 1, settled_to + 1):
            order.append((seq, ""))
            present.add(seq)
            if len(order) > 2 * reach:
                self._evict(seq)
        self._recent.pop("", None)
        for index, (seq, digest) in enumerate(order):
            if not digest:
                digest = by_seq[seq].claimed_hash
                order[index] = (seq, digest)
                self._recent[digest] = seq
        self.records += run.count - len(run.head)
        self.chosen += settled_to - prev.seq
        self._prev = by_seq[settled_to]
        self.last_seq, self.last_hash = settled_to, self._prev.claimed_hash
        self._expected = settled_to + 1
        groups.clear()
        groups.extend([[by_seq[last - 1]], [by_seq[last]]])
        return True

    def finish(self) -> list[Finding]:
        while self._groups:
            group = self._groups.popleft()
            self._settle(group, self._groups[0] if self._groups else None)
        # What still waits: first the records whose predecessor never came, then (links forged into a
        # cycle) the earliest of the rest, until every record has a position.
        for target in sorted((t for t in self._waiting if t not in self._placed), key=self._earliest):
            for placed in self._waiting.pop(target, []):
                self._unlink(placed)
        while self._waiting:
            target = min(self._waiting, key=self._earliest)
            for placed in self._waiting.pop(target):
                self._unlink(placed)
        self._check_tail()
        self.findings.sort(key=Finding.key)
        return self.findings

    def _earliest(self, target: str) -> tuple[int, str]:
        waiting = self._waiting.get(target) or []
        return (min((p.link.seq for p in waiting), default=0), target)

    # One sequence number.

    def _settle(self, group: list[ChainLink], following: list[ChainLink] | None) -> None:
        seq = group[0].seq
        if len(group) > 1:
            genuine = self._genuine(group, following)
            for other in group:
                if other is not genuine:
                    self._find("inserted", seq, "a second record claims this sequence number", doc_id=other.doc_id)
        else:
            genuine = group[0]
        link = genuine
        self.chosen += 1
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq, self.last_hash = seq, link.claimed_hash
        if link.claimed_hash != link.content_hash:
            self._find("modified", seq, "content does not match the record's hash", doc_id=link.doc_id)
        if seq > self._expected:
            self._find("deleted", self._expected, f"{seq - self._expected} record(s) missing", seq_to=seq - 1)
        self._expected = seq + 1
        checkpoint = self.checkpoints.get(seq)
        if checkpoint is not None and checkpoint.get("hash") != link.claimed_hash:
            self._find(
                "checkpoint_mismatch",
                seq,
                "the record here is not the one the signed checkpoint vouches for (chain rewritten)",
            )
        self._place(link)
        self._prev = link
        if len(self._order) > 2 * self.reach:
            self._evict(seq)

    def _genuine(self, group: list[ChainLink], following: list[ChainLink] | None) -> ChainLink:
        """Of several records claiming one sequence number, the chain's own."""
        successors = {f.prev_hash for f in following} if following and following[0].seq == group[0].seq + 1 else set()
        prev_hash = self._prev.claimed_hash if self._prev is not None and self._prev.seq == group[0].seq - 1 else None
        return next(
            (g for g in group if g.claimed_hash == g.content_hash and g.claimed_hash in successors),
            next((g for g in group if prev_hash is not None and g.prev_hash == prev_hash), group[0]),
        )

    # Positions along the links.

    def _place(self, link: ChainLink) -> None:
        prev = self._prev if self._prev is not None and self._prev.seq == link.seq - 1 else None
        if prev is not None and link.prev_hash == prev.claimed_hash:
            before = self._placed.get(prev.claimed_hash)
            if before is None or before.position == prev.seq:
                # The common case: linked to the record before, which is in place; so is this one.
                self._in_place(link)
                return
            placed = _Placed(link)
            self._after(placed, before)
        elif link.seq == self.from_seq and link.prev_hash == self.start_prev:
            self._in_place(link)
            return
        else:
            placed = _Placed(link)
            at = self._recent.get(link.prev_hash)
            if at is None:
                self._waiting.setdefault(link.prev_hash, []).append(placed)
                self._undecided.add(link.seq)
            else:
                self._after(placed, self._placed.get(link.prev_hash), at)
        self._placed[link.claimed_hash] = placed
        self._remember(link.seq, link.claimed_hash)
        for waiting in self._waiting.pop(link.claimed_hash, []):
            if waiting is not placed:
                self._after(waiting, placed)

    def _in_place(self, link: ChainLink) -> None:
        self._remember(link.seq, link.claimed_hash)
        if self._waiting:  # records seen earlier that link to this one
            for waiting in self._waiting.pop(link.claimed_hash, []):
                self._after(waiting, None, link.seq)

    def _after(self, placed: _Placed, before: _Placed | None, before_seq: int | None = None) -> None:
        """`placed` links to `before` (or to the in-place record at `before_seq`): position it."""
        if before is not None and before.position is None:
            self._waiting.setdefault(before.link.claimed_hash, []).append(placed)
            self._undecided.add(placed.link.seq)
            return
        position = (before.position if before is not None else before_seq) + 1  # type: ignore[operator]
        self._resolve(placed, position)

    def _resolve(self, placed: _Placed, position: int) -> None:
        todo = [(placed, position)]  # a loop, not recursion: a displaced run may be long
        while todo:
            placed, position = todo.pop()
            placed.position = position
            link = placed.link
            self._undecided.discard(link.seq)
            candidate = self._candidates.pop(link.seq + 1, None)
            if candidate is not None and link.seq not in self._unlinked_seqs:
                self._inserted(link.seq + 1, candidate)
            if position != link.seq:
                self._find("reordered", link.seq, f"by its links this record belongs at {position}", doc_id=link.doc_id)
            todo.extend((waiting, position + 1) for waiting in self._waiting.pop(link.claimed_hash, []))

    def _unlink(self, placed: _Placed) -> None:
        """No predecessor within reach: a new start of the walk, at its own sequence number."""
        if placed.position is not None:
            return
        link = placed.link
        placed.unlinked = True
        self._unlinked_seqs.add(link.seq)
        # A record whose predecessor is itself unlinked lost its link only because that one was
        # replaced: report the replaced record, not both. Where the predecessor's place is empty,
        # the gap is reported as deleted. Where the predecessor is undecided, wait for it.
        before = link.seq - 1
        if before in self._present and before not in self._unlinked_seqs:
            if before in self._undecided:
                self._candidates[link.seq] = link.doc_id
            else:
                self._inserted(link.seq, link.doc_id)
        self._resolve(placed, link.seq)

    def _inserted(self, seq: int, doc_id: str) -> None:
        self._find("inserted", seq, "does not link to any record in the chain", doc_id=doc_id)

    def _remember(self, seq: int, claimed_hash: str) -> None:
        self._recent[claimed_hash] = seq
        self._order.append((seq, claimed_hash))
        self._present.add(seq)

    def _evict(self, seq: int) -> None:
        horizon = seq - self.reach
        # Records still waiting for a predecessor never seen within `reach` positions never get one
        # (one waiting for a predecessor that was seen but is itself undecided waits on with it).
        if self._waiting:
            for target in [t for t in self._waiting if t not in self._placed]:
                waiting = self._waiting[target]
                stale = [p for p in waiting if p.link.seq < horizon]
                if stale:
                    self._waiting[target] = [p for p in waiting if p.link.seq >= horizon]
                    if not self._waiting[target]:
                        del self._waiting[target]
                    for placed in stale:
                        self._unlink(placed)
        order = self._order
        while order and order[0][0] < horizon - 1:
            old_seq, old_hash = order.popleft()
            if self._recent.get(old_hash) == old_seq:
                del self._recent[old_hash]
            self._present.discard(old_seq)
            self._unlinked_seqs.discard(old_seq)
            done = self._placed.get(old_hash)
            if done is not None and done.link.seq == old_seq and done.position is not None:
                del self._placed[old_hash]

    # The end of the range.

    def _check_tail(self) -> None:
        if self.last_seq is None:
            if self.checkpoints and self.to_seq is None:
                top = max(self.checkpoints)
                self._find("truncated", 1, "no records left, checkpoint vouches for them", seq_to=top)
            return
        last = self.last_seq
        beyond = [seq for seq in self.checkpoints if seq > last and (self.to_seq is None or seq <= self.to_seq)]
        if beyond:
            seq = min(beyond)
            self._find("truncated", last + 1, f"records up to {seq} are vouched for but missing", seq_to=seq)

    def _find(self, kind: str, seq: int, detail: str, *, seq_to: int | None = None, doc_id: str | None = None) -> None:
        self.findings.append(Finding(kind, self.instance, seq, detail, seq_to=seq_to, doc_id=doc_id))
