"""`verify`: recompute each instance's hash chain against its signed checkpoints and say what is wrong.

Findings, each naming the records involved:
- `modified`: a record's content no longer matches its hash;
- `deleted`: sequence numbers missing from the chain;
- `inserted`: a record that does not belong (a second record claiming a sequence number, or one
  whose link points at nothing while its predecessor exists);
- `reordered`: records whose position by sequence number differs from their position by links;
- `truncated`: a signed checkpoint vouches for records that are no longer there;
- `checkpoint_mismatch`: a checkpoint's hash differs from the record at its sequence number (the
  chain was rewritten and re-hashed up to there);
- `bad_signature`, `unknown_key`, `checkpoint_missing`: the checkpoints themselves are not right.

Records after the newest checkpoint are reported as `unsealed` (not an error: they are simply not
yet vouched for by a signature).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.chain import checkpoint_digest, signature_valid
from sentinel.audit.record import GENESIS
from sentinel.audit.store import AuditStore, ChainLink

PublicKeys = Callable[[str], Ed25519PublicKey | None]


@dataclass(slots=True)
class Finding:
    kind: str
    instance: str
    seq: int | None
    detail: str
    seq_to: int | None = None
    doc_id: str | None = None


@dataclass(slots=True)
class InstanceReport:
    instance: str
    first_seq: int | None = None
    last_seq: int | None = None
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
) -> VerifyReport:
    report = VerifyReport(since=since, until=until)
    for name in [instance] if instance else await store.instances():
        report.instances.append(await verify_instance(store, name, public_keys, since=since, until=until))
    return report


async def verify_instance(
    store: AuditStore,
    instance: str,
    public_keys: PublicKeys,
    *,
    since: float | None = None,
    until: float | None = None,
) -> InstanceReport:
    report = InstanceReport(instance)
    valid_checkpoints = _check_checkpoints(await store.checkpoints(instance), public_keys, report)

    from_seq, to_seq = 1, None
    if since is not None or until is not None:
        bounds = await store.seq_range(instance, since, until)
        if bounds is None:
            return report
        from_seq, to_seq = bounds
    links = [link async for link in store.chain_links(instance, from_seq, to_seq)]
    report.records_checked = len(links)
    if not links:
        if valid_checkpoints and to_seq is None:
            top = max(valid_checkpoints)
            report.findings.append(
                Finding("truncated", instance, 1, "no records left, checkpoint vouches for them", seq_to=top)
            )
        return report
    report.first_seq, report.last_seq = links[0].seq, links[-1].seq

    # The hash the first record in range must link to.
    start_prev = GENESIS
    if from_seq > 1:
        before = [link async for link in store.chain_links(instance, from_seq - 1, from_seq - 1)]
        start_prev = before[0].claimed_hash if before else ""

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
    return report


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
