"""Index sequence numbers chosen by whoever holds the bucket's credentials (real SeaweedFS, Object Lock).

The next entry is numbered from the newest *authentic* entry, so a key put high above it neither
breaks the next backup (a number too large for JSON or SQLite) nor blinds cut-back detection; the
key is reported as tampering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sentinel.backup import index
from sentinel.backup.jobs import BackupContext, run_backup
from tests.backup.conftest import SMALL, MakeContext, write_model
from tests.support.seaweed import Seaweed


@pytest.fixture
def locked(make_context: MakeContext, seaweed: Seaweed, tmp_path: Path) -> tuple[BackupContext, str]:
    write_model(tmp_path / "models", {"model.bin": 100_000})
    bucket = seaweed.bucket(lock=True)
    target = seaweed.target_settings(bucket, object_lock_mode="COMPLIANCE", object_lock_days=1)
    plans = {"models": {"sources": [{"kind": "path", "path": str(tmp_path / "models")}]}}
    context = make_context(plans=plans, targets={"default": target}, **SMALL)
    assert run_backup(context, "models").outcome == "success"
    return context, bucket


@pytest.mark.parametrize("planted", ["99999999999999999999", "09223372036854775807", "00000000000000000001"])
def test_a_planted_index_key_neither_breaks_backups_nor_moves_the_numbering(
    locked: tuple[BackupContext, str], attacker: Any, planted: str
) -> None:
    context, bucket = locked
    attacker.put_object(Bucket=bucket, Key=f"{index.PREFIX}{planted}", Body=b"not an index entry")
    for _ in range(2):
        outcome = run_backup(context, "models")
        assert outcome.outcome == "success", outcome.error
    repo = context.repository("models")
    reading = repo.read_index()
    assert reading.newest is not None
    # 0 was the first backup; the planted key (if it was 1) is skipped, never overwritten
    assert reading.newest.sequence == (3 if int(planted) == 1 else 2)
    assert context.run_log().index_seen(repo.id) == reading.newest.sequence  # cut-back detection sees it
    assert len(reading.newest.snapshots) == 3
    catalog = repo.catalog()
    assert catalog.intact
    if int(planted) > reading.newest.sequence:  # above the newest authentic entry: reported as tampering
        assert any(planted in note for note in catalog.notes), catalog.notes
