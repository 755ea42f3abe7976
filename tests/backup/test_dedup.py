"""Deduplication against whoever holds the storage credentials but not the backup key.

A chunk is reused only when the repository vouches for it (an authentic manifest records it, or this
run uploaded it). A chunk that is merely listed must be read and authenticated first: after a prune
deleted a chunk, anyone with the credentials can put garbage of the same size at its key, and a
backup of the same content again must not point at that garbage.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from sentinel.backup.jobs import BackupContext, run_backup, run_prune
from sentinel.backup.repository import chunk_key
from sentinel.backup.restore import Restorer
from sentinel.backup.verify import verify_snapshot
from tests.backup.conftest import SMALL, MakeContext, write_model
from tests.support.seaweed import Seaweed

ONLY_LAST = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
MODEL = {"model.safetensors": 500_000, "tokenizer.json": 30_000}


def context_for(make_context: MakeContext, target: dict[str, Any], models: Path) -> BackupContext:
    plans = {"models": {"sources": [{"kind": "path", "path": str(models)}], "retention": ONLY_LAST}}
    return make_context(plans=plans, targets={"default": target}, **SMALL)


@pytest.fixture(params=["s3", "local"])
def target(request: pytest.FixtureRequest, seaweed: Seaweed) -> dict[str, Any]:
    if request.param == "local":
        return {"kind": "local"}
    return seaweed.target_settings(seaweed.bucket(versioned=True))


def test_a_chunk_put_back_after_prune_by_someone_without_the_key_is_not_reused(
    make_context: MakeContext, target: dict[str, Any], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_model(models, MODEL, seed=1)
    context = context_for(make_context, target, models)
    first = run_backup(context, "models")
    assert first.snapshot is not None
    write_model(models, MODEL, seed=2)
    assert run_backup(context, "models").outcome == "success"
    report = run_prune(context)["default"]
    assert not report.errors and report.chunks_deleted > 0
    repo = context.repository("models")
    listed = repo.chunk_sizes()
    gone = sorted(first.snapshot.chunk_ids() - set(listed))
    assert gone  # the prune deleted the chunks only the first snapshot used
    sizes = {ref.id: ref.size for entry in first.snapshot.files for ref in entry.chunks}
    rng = random.Random(7)
    for chunk_id in gone:  # the attacker re-creates them: garbage of about the right size
        repo.target.put(chunk_key(chunk_id), rng.randbytes(sizes[chunk_id] + 40))

    write_model(models, MODEL, seed=1)  # the operator rolls back to the first model
    again = run_backup(context, "models")
    assert again.outcome == "success", again.error
    assert again.snapshot is not None and again.snapshot.chunk_ids() == first.snapshot.chunk_ids()
    repo = context.repository("models")
    latest = repo.resolve("latest", "models")
    assert latest.id == again.snapshot.id
    assert verify_snapshot(repo, latest, read_data=True).ok
    Restorer(repo).restore(latest, tmp_path / "restored")
    for name in MODEL:
        assert (tmp_path / "restored" / "path" / name).read_bytes() == (models / name).read_bytes(), name
    assert again.stats is not None and again.stats.chunks_new >= len(gone)

    # The next backup keeps the version the manifest records, not the listing's oldest (the garbage).
    third = run_backup(context, "models")
    assert third.snapshot is not None and third.stats is not None and third.stats.uploaded_bytes == 0
    recorded = {r.id: r.version for f in again.snapshot.files for r in f.chunks}
    assert {r.id: r.version for f in third.snapshot.files for r in f.chunks} == recorded
    assert verify_snapshot(context.repository("models"), third.snapshot, read_data=True).ok


def test_chunks_a_failed_run_left_are_authenticated_and_reused(
    make_context: MakeContext, target: dict[str, Any], tmp_path: Path
) -> None:
    """A resumed backup still skips uploading what a failed run finished, once it has read it back."""
    models = tmp_path / "models"
    write_model(models, MODEL, seed=3)
    context = context_for(make_context, target, models)
    first = run_backup(context, "models")
    assert first.snapshot is not None
    repo = context.repository("models")
    for snapshot_id in repo.snapshot_ids():  # as if the run had failed before its manifest
        repo.update_index(remove={snapshot_id})
        repo.delete_snapshot(snapshot_id)
    again = run_backup(context, "models")
    assert again.outcome == "success", again.error
    assert again.stats is not None and again.stats.chunks_new == 0 and again.stats.uploaded_bytes == 0
    Restorer(context.repository("models")).restore(again.snapshot, tmp_path / "restored")  # type: ignore[arg-type]
    for name in MODEL:
        assert (tmp_path / "restored" / "path" / name).read_bytes() == (models / name).read_bytes(), name
