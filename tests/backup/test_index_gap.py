"""A run that dies between writing its manifest and appending to the snapshot index (real SeaweedFS).

The snapshot exists (its manifest is written) but no index entry names it, so its deletion would go
unnoticed; the next index entry must name it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sentinel.backup.jobs import run_backup
from sentinel.backup.repository import snapshot_key
from sentinel.backup.targets import TargetError
from sentinel.backup.targets.s3 import S3Target
from tests.backup.conftest import SMALL, MakeContext, write_model
from tests.support.seaweed import Seaweed


def test_a_snapshot_whose_index_entry_was_never_written_is_indexed_by_the_next_backup(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    write_model(models, {"model.bin": 100_000})
    bucket = seaweed.bucket()
    plans = {"models": {"sources": [{"kind": "path", "path": str(models)}]}}
    context = make_context(plans=plans, targets={"default": seaweed.target_settings(bucket)}, **SMALL)
    assert run_backup(context, "models").outcome == "success"

    real = S3Target.put_if_absent

    def crash_before_the_index(self: S3Target, key: str, data: bytes) -> str | None:
        if key.startswith("index/"):
            raise TargetError("connection reset (the host died here)")
        return real(self, key, data)

    monkeypatch.setattr(S3Target, "put_if_absent", crash_before_the_index)
    write_model(models, {"model.bin": 100_000}, seed=2)
    crashed = run_backup(context, "models")
    assert crashed.outcome == "failure" and crashed.snapshot is None
    orphan = [
        i
        for i in context.repository("models").snapshot_ids()
        if i not in context.repository("models").read_index().newest.snapshots
    ]  # type: ignore[union-attr]
    assert len(orphan) == 1  # its manifest was written
    monkeypatch.setattr(S3Target, "put_if_absent", real)

    write_model(models, {"model.bin": 100_000}, seed=3)
    assert run_backup(context, "models").outcome == "success"
    repo = context.repository("models")
    newest = repo.read_index().newest
    assert newest is not None and orphan[0] in newest.snapshots

    attacker.delete_object(Bucket=bucket, Key=snapshot_key(orphan[0]))  # no lock here: it goes
    catalog = context.repository("models").catalog()
    assert orphan[0] in catalog.missing  # noticed, not a quiet gap
