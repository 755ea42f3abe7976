"""A target without `object_lock_mode` on a bucket whose Object Lock has a default retention (real
SeaweedFS): the server locks every upload by that default, so the backup must know it, or the
chunks a later snapshot reuses are never re-locked and expire while that snapshot needs them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sentinel.backup.jobs import BackupContext, run_backup
from sentinel.backup.repository import chunk_key
from tests.backup.conftest import SMALL, FakeClock, MakeContext, write_model
from tests.support.seaweed import Seaweed

DAY = 86400.0


def test_a_bucket_default_retention_is_adopted_and_reused_chunks_are_re_locked(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_model(models, {"model.bin": 200_000})
    bucket = seaweed.bucket(lock=True)
    attacker.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
        },
    )
    plans = {"models": {"sources": [{"kind": "path", "path": str(models)}]}}
    settings = make_context(plans=plans, targets={"default": seaweed.target_settings(bucket)}, **SMALL).settings
    clock = FakeClock(time.time())
    context = BackupContext(settings, clock=clock)
    target = context.target("models")
    assert (target.lock_mode, target.lock_days) == ("COMPLIANCE", 1)  # type: ignore[attr-defined]

    first = run_backup(context, "models")
    assert first.snapshot is not None
    clock.advance(2.5 * DAY)  # past the first upload's lock (1 day + 1 day slack)
    second = run_backup(context, "models")
    assert second.stats is not None and second.snapshot is not None
    assert second.stats.uploaded_bytes == 0 and second.stats.locks_extended == len(second.snapshot.chunk_ids())
    for chunk_id in second.snapshot.chunk_ids():
        versions = attacker.list_object_versions(Bucket=bucket, Prefix=chunk_key(chunk_id))["Versions"]
        head = attacker.head_object(Bucket=bucket, Key=chunk_key(chunk_id), VersionId=versions[0]["VersionId"])
        assert head["ObjectLockRetainUntilDate"].timestamp() >= clock() + 1 * DAY, chunk_id
