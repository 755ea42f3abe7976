"""The S3 target's own guarantees on a real SeaweedFS: deletes reach every version, however many
listing pages they take; chunks never go up as multipart uploads (which return no version id)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from sentinel.backup.settings import TargetSettings
from sentinel.backup.targets.s3 import S3Target
from tests.support.seaweed import Seaweed


def test_delete_removes_versions_beyond_the_first_listing_page(seaweed: Seaweed) -> None:
    bucket = seaweed.bucket(versioned=True)
    client = seaweed.client(max_pool_connections=16)
    key = "chunks/ab/" + "ab" * 32
    with ThreadPoolExecutor(16) as pool:  # one page holds 1000 versions
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=key, Body=b"%d" % i), range(1010)))
    client.put_object(Bucket=bucket, Key=key + "-neighbour", Body=b"stays")
    target = S3Target.from_settings(TargetSettings(**seaweed.target_settings(bucket)))
    target.delete(key)
    paginator = client.get_paginator("list_object_versions")
    left = [
        v["Key"]
        for page in paginator.paginate(Bucket=bucket, Prefix=key)
        for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
    ]
    assert left == [key + "-neighbour"]
    client.close()


def test_the_multipart_threshold_stays_above_the_largest_chunk(seaweed: Seaweed) -> None:
    with pytest.raises(ValidationError, match="multipart_threshold"):
        TargetSettings(**seaweed.target_settings("b", multipart_threshold=16 * 1024 * 1024))
    assert TargetSettings(**seaweed.target_settings("b", multipart_threshold=17 * 1024 * 1024))
