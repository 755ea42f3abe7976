"""`ChainWalk` against tampering: paging never changes what it finds, and on tampering whose effects do
not overlap it finds exactly what the whole-chain walk (`reference_walk`, every link in memory) finds.

Chains here are plain `ChainLink`s (the walk is pure); `test_verify.py` and `test_verify_scale.py`
tamper with real stored records."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sentinel.audit.record import GENESIS
from sentinel.audit.store import ChainLink
from sentinel.audit.walk import HEAD, ChainWalk, Finding, clean_run
from tests.audit.reference_walk import whole_chain_walk

INSTANCE = "node-a"


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def chain(n: int) -> list[ChainLink]:
    links, prev = [], GENESIS
    for seq in range(1, n + 1):
        digest = h(f"record {seq}")
        links.append(ChainLink(seq, f"{INSTANCE}:{seq:012d}", prev, digest, digest, float(seq)))
        prev = digest
    return links


def checkpoints(links: list[ChainLink], every: int) -> dict[int, dict[str, Any]]:
    return {link.seq: {"seq": link.seq, "hash": link.claimed_hash} for link in links if link.seq % every == 0}


# Tampering, as an operator with write access to the store would do it.


def delete(links: list[ChainLink], seq: int) -> list[ChainLink]:
    return [link for link in links if link.seq != seq]


def modify(links: list[ChainLink], seq: int) -> list[ChainLink]:
    """Edit the content, leave the hash: a sloppy cover-up."""
    return [link._replace(content_hash=h(f"edited {seq}")) if link.seq == seq else link for link in links]


def rehash(links: list[ChainLink], seq: int) -> list[ChainLink]:
    """Edit the content and recompute its hash; the next record still links to the old one."""
    new = h(f"rewritten {seq}")
    return [link._replace(claimed_hash=new, content_hash=new) if link.seq == seq else link for link in links]


def unlinked(links: list[ChainLink], seq: int) -> list[ChainLink]:
    """A fabricated record in place of a real one, linking to nothing."""
    new = h(f"fabricated {seq}")
    return [
        link._replace(prev_hash=h("nowhere"), claimed_hash=new, content_hash=new) if link.seq == seq else link
        for link in links
    ]


def duplicate(links: list[ChainLink], seq: int) -> list[ChainLink]:
    """A second record claiming a taken sequence number (its copied hash does not match its content)."""
    out = list(links)
    for link in links:
        if link.seq == seq:
            out.append(link._replace(doc_id=link.doc_id + "-forged", content_hash=h(f"forged {seq}")))
    return sorted(out, key=lambda link: (link.seq, link.doc_id))


def swap(links: list[ChainLink], seq: int) -> list[ChainLink]:
    """Exchange the positions of the records at `seq` and `seq + 1`, each keeping its own hash."""

    def moved(link: ChainLink) -> ChainLink:
        if link.seq == seq:
            return link._replace(seq=seq + 1)
        if link.seq == seq + 1:
            return link._replace(seq=seq)
        return link

    return sorted((moved(link) for link in links), key=lambda link: (link.seq, link.doc_id))


def truncate(links: list[ChainLink], seq: int) -> list[ChainLink]:
    return [link for link in links if link.seq < seq]


OPS = {
    "delete": delete,
    "modify": modify,
    "rehash": rehash,
    "unlinked": unlinked,
    "duplicate": duplicate,
    "swap": swap,
    "truncate": truncate,
}


def walk(
    links: list[ChainLink], cps: dict[int, dict[str, Any]], page: int, *, reach: int = 1024, **kwargs: Any
) -> list[Finding]:
    w = ChainWalk(INSTANCE, checkpoints=cps, reach=reach, start_prev=kwargs.pop("start_prev", GENESIS), **kwargs)
    for start in range(0, len(links), page):
        w.feed(links[start : start + page])
    return w.finish()


def walk_skipping(links: list[ChainLink], cps: dict[int, dict[str, Any]], page: int, reach: int) -> ChainWalk:
    """As `verify` with worker processes: pages of sequence numbers, each whole one skipped over."""
    w = ChainWalk(INSTANCE, checkpoints=cps, reach=reach, start_prev=GENESIS)
    hashes = {seq: c["hash"] for seq, c in cps.items()}
    top = max((link.seq for link in links), default=0)
    for lo in range(1, top + 1, page):
        part = [link for link in links if lo <= link.seq < lo + page]
        run = clean_run(part, lo, hashes, reach)
        if run is None:
            w.feed(part)
        elif not w.skip(run):
            w.feed(part[HEAD:])
    return w


def plain(findings: list[Finding]) -> list[tuple[Any, ...]]:
    return sorted((f.kind, f.seq, f.seq_to, f.doc_id) for f in findings)


tampering = st.lists(st.tuples(st.sampled_from(sorted(OPS)), st.integers(min_value=1, max_value=60)), max_size=8)


@settings(
    max_examples=int(os.environ.get("SENTINEL_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(n=st.integers(min_value=0, max_value=120), ops=tampering, every=st.integers(min_value=1, max_value=9))
@example(n=10, ops=[("unlinked", 1), ("unlinked", 3)], every=1)  # verdicts must not depend on the order decided
def test_paging_never_changes_the_findings(n: int, ops: list[tuple[str, int]], every: int) -> None:
    links = chain(n)
    cps = checkpoints(links, every)
    for name, seq in ops:
        links = OPS[name](links, seq)
    whole = walk(links, cps, page=max(1, len(links)))
    for page in (1, 2, 7, 50_000):
        assert walk(links, cps, page) == whole
    # A reach shorter than the damage's extent changes nothing for damage this local.
    assert walk(links, cps, 3, reach=8) == whole
    # Whole pages skipped over leave the walk as seeing every record would.
    for page, reach in ((12, 2), (17, 3), (40, 8)):
        skipping, fed = (
            walk_skipping(links, cps, page, reach),
            ChainWalk(INSTANCE, checkpoints=cps, reach=reach, start_prev=GENESIS),
        )
        fed.feed(links)
        assert skipping.finish() == fed.finish()
        assert (skipping.records, skipping.chosen, skipping.last_seq, skipping.last_hash) == (
            fed.records,
            fed.chosen,
            fed.last_seq,
            fed.last_hash,
        )
        assert list(skipping._order) == list(fed._order) and skipping._recent == fed._recent


@settings(
    max_examples=int(os.environ.get("SENTINEL_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    n=st.integers(min_value=20, max_value=80),
    picks=st.lists(st.tuples(st.sampled_from(sorted(set(OPS) - {"truncate"})), st.integers(0, 15)), max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=2, max_value=80)),
    every=st.integers(min_value=1, max_value=9),
)
def test_local_tampering_is_found_as_the_whole_chain_walk_finds_it(
    n: int, picks: list[tuple[str, int]], cut: int | None, every: int
) -> None:
    """Tampering at places at least 5 records apart (so each one's effects stand alone)."""
    links = chain(n)
    cps = checkpoints(links, every)
    for index, (name, offset) in enumerate(picks):
        seq = 3 + index * 20 + offset
        if seq + 2 < n:
            links = OPS[name](links, seq)
    if cut is not None and cut <= n:
        links = truncate(links, cut)
    expected = whole_chain_walk(INSTANCE, links, cps, start_prev=GENESIS)
    for page in (1, 2, 7, 50_000):
        assert plain(walk(links, cps, page)) == plain(expected)


def test_a_range_starts_from_the_hash_before_it() -> None:
    links = chain(30)[9:]  # records 10..30, as verifying "since" record 10 reads them
    before = chain(30)[8].claimed_hash
    assert walk(links, {}, 4, from_seq=10, start_prev=before) == []
    assert plain(walk(links, {}, 4, from_seq=10, start_prev=h("another record 9"))) == [
        ("inserted", 10, None, f"{INSTANCE}:{10:012d}")
    ]


def test_a_record_moved_far_is_reordered_within_reach_and_inserted_beyond_it() -> None:
    links = chain(100)
    moved = [
        link._replace(seq=90) if link.seq == 10 else link._replace(seq=10) if link.seq == 90 else link for link in links
    ]
    moved.sort(key=lambda link: (link.seq, link.doc_id))
    near = plain(walk(moved, {}, 7))
    # Only the two moved records are out of place: their neighbours still follow their links.
    assert {(kind, seq) for kind, seq, _, _ in near} == {("reordered", 10), ("reordered", 90)}
    assert near == plain(whole_chain_walk(INSTANCE, moved, {}, start_prev=GENESIS))
    far = plain(walk(moved, {}, 7, reach=16))
    assert {(kind, seq) for kind, seq, _, _ in far} == {("inserted", 10), ("inserted", 90)}


def test_memory_holds_the_reach_not_the_chain() -> None:
    w = ChainWalk(INSTANCE, start_prev=GENESIS, reach=64)
    links = chain(5000)
    for start in range(0, len(links), 100):
        w.feed(links[start : start + 100])
        assert len(w._recent) <= 2 * 64 + 3 and not w._placed and not w._waiting
    assert w.finish() == [] and w.chosen == 5000


def test_whole_pages_are_skipped_and_a_tampered_one_is_not() -> None:
    links = chain(200)
    hashes: dict[int, str] = {}
    assert clean_run(links[:50], 1, hashes, 8) is not None
    assert clean_run(modify(links, 20)[:50], 1, hashes, 8) is None
    assert clean_run(delete(links, 20)[:49], 1, hashes, 8) is None
    assert clean_run(duplicate(delete(links, 21), 20)[:50], 1, hashes, 8) is None  # a duplicate filling a gap
    assert clean_run(links[:50], 1, {10: h("another record")}, 8) is None  # a checkpoint says otherwise
    w = ChainWalk(INSTANCE, start_prev=GENESIS, reach=8)
    run = clean_run(links[:50], 1, hashes, 8)
    assert run is not None and w.skip(run)
    assert (w.records, w.chosen, w.last_seq) == (50, 48, 48)
