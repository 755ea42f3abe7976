"""Object keys under `snapshots/` and `chunks/` put there by whoever holds the bucket's credentials
(real SeaweedFS, Object Lock): only `snapshots/<id>` and `chunks/<id[:2]>/<id>` are read as such.

A key like `snapshots/zz/<id of the newest snapshot>` once replaced the genuine manifest's history
(ids were the last path segment): the newest snapshot was then reported damaged and `restore
latest` refused — a denial of service by one PUT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sentinel.backup.jobs import run_backup, run_prune
from sentinel.backup.repository import chunk_key
from sentinel.backup.restore import Restorer
from tests.backup.conftest import SMALL, MakeContext, write_model
from tests.support.seaweed import Seaweed


def test_keys_nested_under_snapshots_and_chunks_do_not_stand_in_for_genuine_ones(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_model(models, {"model.bin": 200_000})
    bucket = seaweed.bucket(lock=True)
    target = seaweed.target_settings(bucket, object_lock_mode="COMPLIANCE", object_lock_days=1)
    plans = {"models": {"sources": [{"kind": "path", "path": str(models)}]}}
    context = make_context(plans=plans, targets={"default": target}, **SMALL)
    outcome = run_backup(context, "models")
    assert outcome.snapshot is not None
    newest = outcome.snapshot
    chunk = next(iter(newest.chunk_ids()))
    attacker.put_object(Bucket=bucket, Key=f"snapshots/zz/{newest.id}", Body=b"garbage")
    attacker.put_object(Bucket=bucket, Key=f"chunks/zz/{chunk}", Body=b"garbage")
    attacker.put_object(Bucket=bucket, Key=f"{chunk_key(chunk)}/x", Body=b"garbage")

    repo = context.repository("models")
    catalog = repo.catalog()
    assert catalog.intact, catalog.problems()
    assert any(f"snapshots/zz/{newest.id}" in note for note in catalog.notes)
    assert repo.resolve("latest", "models").id == newest.id
    Restorer(repo).restore(repo.resolve("latest", "models"), tmp_path / "restored")
    assert (tmp_path / "restored" / "path" / "model.bin").read_bytes() == (models / "model.bin").read_bytes()
    assert run_backup(context, "models").outcome == "success"
    report = run_prune(context)["default"]
    assert not report.errors
