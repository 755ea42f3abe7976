"""The whole-chain walk Sentinel verified with before the windowed verifier (`sentinel.audit.walk`), kept
as the reference the tests compare it with: it holds every link of the chain in memory at once and
positions records by walking the links from the start, an independent way to reach the same findings."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sentinel.audit.store import ChainLink
from sentinel.audit.verify import Finding, InstanceReport


def whole_chain_walk(
    instance: str,
    links: list[ChainLink],
    valid_checkpoints: dict[int, dict[str, Any]],
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    start_prev: str,
) -> list[Finding]:
    report = InstanceReport(instance)
    if not links:
        if valid_checkpoints and to_seq is None:
            top = max(valid_checkpoints)
            report.findings.append(
                Finding("truncated", instance, 1, "no records left, checkpoint vouches for them", seq_to=top)
            )
        return report.findings

    by_seq: dict[int, list[ChainLink]] = defaultdict(list)
    for link in links:
        by_seq[link.seq].append(link)
    successors = {link.prev_hash for link in links}

    # One record per sequence number; the extra ones were inserted.
    chosen: list[ChainLink] = []
    previous_hash = start_prev
    for seq in sorted(by_seq):
        group = by_seq[seq]
        if len(group) > 1:
            genuine = next(
                (g for g in group if g.claimed_hash in successors and g.claimed_hash == g.content_hash),
                next((g for g in group if g.prev_hash == previous_hash), group[0]),
            )
            for other in group:
                if other is not genuine:
                    report.findings.append(
                        Finding(
                            "inserted",
                            instance,
                            seq,
                            "a second record claims this sequence number",
                            doc_id=other.doc_id,
                        )
                    )
            group = [genuine]
        chosen.append(group[0])
        previous_hash = group[0].claimed_hash

    # Content.
    for link in chosen:
        if link.claimed_hash != link.content_hash:
            report.findings.append(
                Finding("modified", instance, link.seq, "content does not match the record's hash", doc_id=link.doc_id)
            )

    # Gaps.
    expected = from_seq
    for link in chosen:
        if link.seq > expected:
            report.findings.append(
                Finding("deleted", instance, expected, f"{link.seq - expected} record(s) missing", seq_to=link.seq - 1)
            )
        expected = link.seq + 1

    # Order by links versus order by sequence numbers: walk the links from the start of the range
    # (and from every record whose predecessor is gone) and compare positions with sequence numbers.
    by_hash = {link.claimed_hash: link for link in chosen}
    successor = {link.prev_hash: link for link in chosen}
    position: dict[str, int] = {}
    heads = [(start_prev, from_seq)] + [
        (link.prev_hash, link.seq) for link in chosen if link.prev_hash not in by_hash and link.prev_hash != start_prev
    ]
    for head_hash, first_position in heads:
        current, index = successor.get(head_hash), first_position
        while current is not None and current.doc_id not in position:
            position[current.doc_id] = index
            index += 1
            current = successor.get(current.claimed_hash)
    seqs = {link.seq for link in chosen}
    unlinked: set[int] = set()
    for link in chosen:
        if link.prev_hash not in by_hash and link.prev_hash != start_prev:
            # A record whose predecessor is itself unlinked lost its link only because that one was
            # replaced: report the replaced record, not both.
            replaced_before = link.seq - 1 in unlinked
            unlinked.add(link.seq)
            if link.seq - 1 in seqs and not replaced_before:
                report.findings.append(
                    Finding(
                        "inserted", instance, link.seq, "does not link to any record in the chain", doc_id=link.doc_id
                    )
                )
            continue  # otherwise its predecessor is missing: reported as deleted
        expected_at = position.get(link.doc_id)
        if expected_at is not None and expected_at != link.seq:
            report.findings.append(
                Finding(
                    "reordered",
                    instance,
                    link.seq,
                    f"by its links this record belongs at {expected_at}",
                    doc_id=link.doc_id,
                )
            )

    # Checkpoints against the records.
    hashes = {link.seq: link.claimed_hash for link in chosen}
    last = chosen[-1].seq
    for seq, checkpoint in sorted(valid_checkpoints.items()):
        if seq < from_seq or (to_seq is not None and seq > to_seq):
            continue
        if seq in hashes:
            if hashes[seq] != checkpoint["hash"]:
                report.findings.append(
                    Finding(
                        "checkpoint_mismatch",
                        instance,
                        seq,
                        "the record here is not the one the signed checkpoint vouches for (chain rewritten)",
                    )
                )
        elif seq > last:
            report.findings.append(
                Finding("truncated", instance, last + 1, f"records up to {seq} are vouched for but missing", seq_to=seq)
            )
            break
    if valid_checkpoints:
        report.last_checkpoint_seq = max(valid_checkpoints)
        report.unsealed = max(0, last - report.last_checkpoint_seq)
    else:
        report.unsealed = len(chosen)
    return report.findings
