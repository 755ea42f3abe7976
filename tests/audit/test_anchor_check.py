"""Verifying a trail against its anchors (sentinel/audit/anchor/check.py with the verifier): the S3 is a
real SeaweedFS with an Object Lock bucket and the time-stamps come from a real RFC 3161 authority
(`openssl ts`). The operator holds the data directory and the key: what they rewrite and re-sign
verifies locally, and the anchors show it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sentinel.audit.anchor.check import read_anchors
from sentinel.audit.anchor.s3 import AnchorConflict, AnchorMisconfigured, AnchorUnavailable
from sentinel.audit.note import Checkpoint, sign_checkpoint
from sentinel.audit.tlog import CompactRange, leaf_hash
from tests.support.anchors import ORIGIN, PREFIX, Anchored, anchored_trail, object_lock_anchor, rewrite
from tests.support.seaweed import Seaweed, free_ports
from tests.support.tsa import Tsa


@pytest.fixture
async def anchored(tmp_path: Path, seaweed: Seaweed, tsa: Tsa) -> AsyncIterator[Anchored]:
    async with anchored_trail(tmp_path, seaweed, tsa) as trail:
        yield trail


async def test_a_clean_trail_agrees_with_its_anchors(anchored: Anchored) -> None:
    reading = await anchored.read()
    assert await anchored.against_anchors() == []
    assert sorted(reading.roots["node-a"]) == [1, 8, 15, 22, 29]
    # Every root from the listing; the newest note read, its signature and token checked.
    assert (reading.anchored, reading.signed, reading.stamped, reading.ignored) == (5, 1, 1, [])
    head = reading.heads["node-a"]
    assert head.size == 29 and head.stamped_at is not None and head.stamped_at.tzinfo is not None
    assert reading.statement().startswith(f"verified against 5 checkpoints anchored in s3://{anchored.bucket}/anchors/")
    assert "roots as their keys name them, 1 note(s) read (each chain's newest)" in reading.statement()
    assert reading.statement().endswith("1 time-stamped by CN=Sentinel Test Root CA (RFC 3161)")
    report = await anchored.trail.verify(anchored=reading.roots)
    assert report.instances[0].roots_checked == 5  # the same sizes the local notes name

    every = await anchored.read(every=True)
    assert (every.roots, every.anchored, every.signed, every.stamped) == (reading.roots, 5, 5, 5)
    assert "every note's signature checked, 5 time-stamped by CN=Sentinel Test Root CA" in every.statement()
    assert await anchored.against_anchors(every=True) == []


async def test_a_truncation_with_its_checkpoints_deleted_is_found(anchored: Anchored) -> None:
    """The issue's measured attack: the records after 10 and their checkpoints deleted; locally intact."""
    anchored.trail.sql("DELETE FROM records WHERE seq > 10")
    anchored.trail.sql("DELETE FROM checkpoints WHERE seq > 10")
    assert await anchored.local() == []
    assert await anchored.against_anchors() == [("truncated", 11, 29)]


async def test_a_chain_deleted_whole_is_truncated_from_its_first_record(anchored: Anchored) -> None:
    anchored.trail.sql("DELETE FROM records")
    anchored.trail.sql("DELETE FROM checkpoints")
    assert await anchored.local() == []
    assert await anchored.against_anchors() == [("truncated", 1, 29)]


async def test_a_full_rewrite_re_signed_with_the_real_key_is_found(anchored: Anchored) -> None:
    """Record 3 changed, every later record re-hashed and relinked, every checkpoint and its Merkle note
    re-signed with the real signing key: the store verifies, against the anchored roots it does not."""
    before = {c["seq"]: c["note"] for c in anchored.checkpoints()}
    rewrite(anchored.trail.store.path, "node-a", 3, anchored.signer())
    assert await anchored.local() == []
    stored = await anchored.trail.store.checkpoints("node-a")
    assert [c["note"] == before[c["seq"]] for c in stored] == [True, False, False, False, False]  # re-signed
    assert await anchored.against_anchors() == [("anchor_mismatch", 8, None)]


async def test_a_rewrite_after_the_last_anchored_checkpoint_is_found_there(anchored: Anchored) -> None:
    rewrite(anchored.trail.store.path, "node-a", 23, anchored.signer())
    assert await anchored.local() == []
    assert await anchored.against_anchors() == [("anchor_mismatch", 29, None)]


async def test_a_fork_cannot_replace_an_anchored_size_and_disagrees_at_a_new_one(anchored: Anchored) -> None:
    """A second history for the same origin: at a size already anchored, publishing is refused; at a size
    not yet anchored it is anchored beside the first, and its root is not the records'."""
    other = hashlib.sha256(b"another history").digest()
    with pytest.raises(AnchorConflict):
        await anchored.anchor.publish(ORIGIN, 15, anchored.note(15, other))
    assert await anchored.against_anchors() == []

    assert await anchored.anchor.publish(ORIGIN, 10, anchored.note(10, other)) is True
    assert await anchored.against_anchors() == [("anchor_mismatch", 10, None)]


async def test_an_anchored_checkpoint_overwritten_by_the_credential_holder_is_flagged_and_not_used(
    anchored: Anchored,
) -> None:
    original = (await anchored.read()).roots["node-a"][15]
    key = anchored.key(15, original)
    # The forger's note is validly signed (they hold the key) for records they would rewrite.
    forged = anchored.note(15, hashlib.sha256(b"rewritten").digest())
    anchored.owner.put_object(Bucket=anchored.bucket, Key=key, Body=forged)

    reading = await anchored.read()
    assert reading.roots["node-a"][15] == original
    assert await anchored.against_anchors() == [("anchor_rewritten", 15, None)]
    (finding,) = reading.findings
    assert "2 version(s)" in finding.detail
    assert "the first version of the first key, which Object Lock keeps" in finding.detail

    roots = reading.roots["node-a"]
    anchored.owner.delete_object(Bucket=anchored.bucket, Key=anchored.key(22, roots[22]))  # a delete marker
    assert await anchored.against_anchors() == [("anchor_rewritten", 15, None), ("anchor_rewritten", 22, None)]
    assert sorted((await anchored.read()).roots["node-a"]) == [1, 8, 15, 22, 29]


async def test_notes_not_signed_by_a_trusted_key_for_their_place_vouch_for_nothing(anchored: Anchored) -> None:
    stranger = Ed25519PrivateKey.generate()
    root = hashlib.sha256(b"junk").digest()
    await anchored.anchor.publish(ORIGIN, 35, anchored.note(35, root, stranger))  # beyond the records
    # Not a checkpoint, and validly signed but for size 15, filed under 42 (publish refuses both; the
    # credential holder need not).
    anchored.owner.put_object(Bucket=anchored.bucket, Key=anchored.key(36, root), Body=f"{ORIGIN}\n36\nnot\n".encode())
    anchored.owner.put_object(Bucket=anchored.bucket, Key=anchored.key(42, root), Body=anchored.note(15, root))
    elsewhere = sign_checkpoint(Checkpoint("elsewhere/audit/node-z", 3, root), stranger).encode()
    await anchored.anchor.publish("elsewhere/audit/node-z", 3, elsewhere)

    reading = await anchored.read()
    assert sorted(reading.roots["node-a"]) == [1, 8, 15, 22, 29]  # no truncation claimed by junk
    assert reading.ignored == ["elsewhere/audit/node-z"]
    assert await anchored.against_anchors() == [
        ("anchor_invalid", 35, None),
        ("anchor_invalid", 36, None),
        ("anchor_invalid", 42, None),
    ]
    details = {f.seq: f.detail for f in reading.findings}
    assert "not signed by a trusted key" in details[35]
    assert f"it names {ORIGIN} at size 15" in details[42]


async def test_a_root_in_a_key_no_trusted_key_signed_can_only_fail_verification(anchored: Anchored) -> None:
    """Between the newest and the first, roots are taken from the keys unread: a key added by whoever
    holds the anchor's credentials, with a note nobody trusted signed, is compared like the others, so
    it cannot make a rewritten trail pass, only a clean one fail. Reading every note names it for what
    it is and leaves it out."""
    stranger = Ed25519PrivateKey.generate()
    junk = hashlib.sha256(b"junk").digest()
    forged = anchored.note(10, junk, stranger)
    anchored.owner.put_object(Bucket=anchored.bucket, Key=anchored.key(10, junk), Body=forged)
    assert await anchored.against_anchors() == [("anchor_mismatch", 10, None)]
    assert await anchored.against_anchors(every=True) == [("anchor_invalid", 10, None)]


async def test_a_token_that_does_not_stamp_its_note_is_found(anchored: Anchored) -> None:
    """A checkpoint published with the token of another: the token verifies, but not for this note."""
    note = anchored.note(10, await _root_at(anchored, 10))
    await anchored.anchor.publish(ORIGIN, 10, note, anchored.tokens[8])
    reading = await anchored.read(every=True)
    assert 10 in reading.roots["node-a"]  # the signed note still counts
    assert (reading.anchored, reading.stamped) == (6, 5)
    assert await anchored.against_anchors(every=True) == [("timestamp_invalid", 10, None)]
    assert "stamps other data" in reading.findings[0].detail
    assert await anchored.against_anchors() == []  # only the newest token is read by default

    # Without the TSA's certificates, tokens are not checked, and the statement says so.
    unchecked = await read_anchors(anchored.anchor, anchored.keys(), PREFIX, None)
    assert unchecked.findings == [] and unchecked.stamped == 0
    assert unchecked.statement().endswith("time-stamp tokens not checked (no audit.timestamp configured)")


async def test_only_a_bucket_under_object_lock_is_read(anchored: Anchored, seaweed: Seaweed) -> None:
    with object_lock_anchor(seaweed, seaweed.bucket(versioned=True)) as unlocked:
        with pytest.raises(AnchorMisconfigured, match="Object Lock is not enabled"):
            await read_anchors(unlocked, anchored.keys(), PREFIX, None)


async def test_an_unreachable_anchor_is_an_error_not_an_empty_reading(anchored: Anchored, seaweed: Seaweed) -> None:
    (port,) = free_ports(1)
    gone = Seaweed(f"http://127.0.0.1:{port}", seaweed.data_dir)
    with object_lock_anchor(gone, anchored.bucket) as anchor, pytest.raises(AnchorUnavailable):
        await read_anchors(anchor, anchored.keys(), PREFIX, None)


async def _root_at(anchored: Anchored, size: int) -> bytes:
    """The Merkle root of the chain's first `size` records, as the verifier computes it."""
    tree = CompactRange()
    rows = await anchored.trail.store.execute(
        "SELECT CAST(body AS BLOB) FROM records WHERE seq <= ? ORDER BY seq", (size,)
    )
    for (body,) in rows:
        tree.append(leaf_hash(bytes(body)))
    return tree.root()


async def test_a_range_that_ends_before_the_head_is_checked_up_to_its_end(anchored: Anchored) -> None:
    """A period from the first record to record 10 gives the roots at 1 and 8, and claims nothing about
    the anchored sizes after it; a rewrite in it shows."""
    rows = await anchored.trail.store.execute("SELECT recorded_at FROM records WHERE seq = 10")
    until = float(rows[0][0])
    reading = await anchored.read()
    report = await anchored.trail.verify(until=until, anchored=reading.roots)
    assert (report.instances[0].first_seq, report.instances[0].last_seq) == (1, 10)
    assert report.findings == []
    rewrite(anchored.trail.store.path, "node-a", 3, anchored.signer())
    report = await anchored.trail.verify(until=until, anchored=reading.roots)
    assert [(f.kind, f.seq) for f in report.findings] == [("anchor_mismatch", 8)]


async def test_objects_that_cannot_name_a_log_are_a_finding_not_a_failure(anchored: Anchored) -> None:
    key = f"anchors/{PREFIX}/a node/checkpoint/{3:020d}"
    anchored.owner.put_object(Bucket=anchored.bucket, Key=key, Body=b"anything")
    reading = await anchored.read()
    assert [(f.kind, f.instance, f.seq) for f in reading.findings] == [("anchor_invalid", "a node", None)]
    assert sorted(reading.roots) == ["node-a"] and reading.anchored == 5


async def test_checkpoints_signed_long_ago_that_are_not_anchored_are_a_finding(anchored: Anchored) -> None:
    """Anchoring stalled, or what it anchored was removed (a retention the operator set too short) or
    hidden: the chain's own signed checkpoints older than audit.anchor_lag_max say what must be there."""
    reading = await anchored.read()
    later = time.time() + 3600  # every checkpoint of the trail was signed before this
    assert (await anchored.trail.verify(anchored=reading.roots, anchored_before=later)).findings == []
    nothing = await anchored.trail.verify(anchored={}, anchored_before=later)
    assert [(f.kind, f.seq, f.seq_to) for f in nothing.findings] == [("not_anchored", 1, 29)]
    fewer = {"node-a": {s: r for s, r in reading.roots["node-a"].items() if s <= 15}}
    stalled = await anchored.trail.verify(anchored=fewer, anchored_before=later)
    assert [(f.kind, f.seq, f.seq_to) for f in stalled.findings] == [("not_anchored", 16, 29)]
    # Signed just now, within the lag: not yet due.
    assert (await anchored.trail.verify(anchored=fewer, anchored_before=0.0)).findings == []


async def test_the_auditors_log_origin_holds_when_the_operator_changes_theirs(anchored: Anchored) -> None:
    """The operator sets audit.log_origin to another name, rewrites the trail and re-signs its notes under
    it: the genuine anchors are under the old origin, which an auditor's pin file names. Verified under the
    pinned origin, the notes are not this log's and the anchored roots disagree."""
    reading = await anchored.read()
    rewrite(anchored.trail.store.path, "node-a", 3, anchored.signer(), prefix="other/audit")
    assert await anchored.local() == []  # under the operator's own origin, all is well
    report = await anchored.trail.verify(anchored=reading.roots, log_origin=PREFIX)
    kinds = {(f.kind, f.seq) for f in report.findings}
    assert ("anchor_mismatch", 8) in kinds and ("note_invalid", 8) in kinds


async def test_a_chain_is_listed_where_it_is_expected_whatever_the_folders_around_it(anchored: Anchored) -> None:
    """Every key of the chain hidden behind a delete marker and the walk of the folders told nothing: the
    chain the store holds is still listed directly under its origin, and its history named."""
    listing = await anchored.anchor.listing(ORIGIN)
    for checkpoint in listing.checkpoints:
        anchored.owner.delete_object(Bucket=anchored.bucket, Key=checkpoint.key)
        if checkpoint.token_version_id:
            anchored.owner.delete_object(Bucket=anchored.bucket, Key=checkpoint.key + ".tsr")
    found = await read_anchors(anchored.anchor, anchored.keys(), PREFIX, anchored.trust, expected=["node-a"])
    assert sorted(found.roots["node-a"]) == [1, 8, 15, 22, 29]
    assert {f.kind for f in found.findings} == {"anchor_rewritten"}
    # A server whose folder listings leave the chain out (SeaweedFS does, past 1,000 versions, beside a
    # folder whose name extends it): the walk finds nothing, the direct listing still everything.
    anchored.anchor._origins = list  # type: ignore[method-assign]
    blind = await read_anchors(anchored.anchor, anchored.keys(), PREFIX, anchored.trust)
    assert blind.roots == {}
    found = await read_anchors(anchored.anchor, anchored.keys(), PREFIX, anchored.trust, expected=["node-a"])
    assert sorted(found.roots["node-a"]) == [1, 8, 15, 22, 29]


async def test_an_instance_named_checkpoint_is_verified_too(tmp_path: Path, seaweed: Seaweed, tsa: Tsa) -> None:
    async with anchored_trail(tmp_path, seaweed, tsa, instance="checkpoint") as trail:
        reading = await read_anchors(trail.anchor, trail.keys(), PREFIX, trail.trust)
        assert sorted(reading.roots["checkpoint"]) == [1, 8, 15, 22, 29]
        rewrite(trail.trail.store.path, "checkpoint", 3, trail.signer())
        report = await trail.trail.verify(anchored=reading.roots)
        assert [(f.kind, f.seq) for f in report.findings] == [("anchor_mismatch", 8)]
