"""A restore drill verifies the restored trail against the anchors when `audit.anchor` is configured
(sentinel/audit/drill.py), and says what it verified against. The S3 is a real SeaweedFS with an
Object Lock bucket, the time-stamps come from a real RFC 3161 authority (`openssl ts`)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel.audit.anchor.check import NOT_ANCHORED
from sentinel.audit.drill import AuditTrailCheck
from sentinel.backup.checks import CheckResult
from sentinel.backup.snapshot import Snapshot, SourceRecord
from sentinel.config import load_settings
from tests.support.anchors import Anchored, anchor_settings, anchored_trail, rewrite
from tests.support.seaweed import Seaweed, free_ports
from tests.support.tsa import Tsa


@pytest.fixture
async def anchored(tmp_path: Path, seaweed: Seaweed, tsa: Tsa) -> AsyncIterator[Anchored]:
    async with anchored_trail(tmp_path / "data" / "audit", seaweed, tsa) as trail:
        yield trail


def restored(anchored: Anchored, directory: Path, *, keep: int | None = None) -> Path:
    """The trail's store as a backup restores it (`<dir>/audit/store.db`), holding the first `keep` records
    (a backup taken before the later ones were written)."""
    target = directory / "audit" / "store.db"
    target.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(anchored.trail.store.path)) as source:
        with contextlib.closing(sqlite3.connect(target)) as copy:
            source.backup(copy)
            if keep is not None:
                copy.execute("DELETE FROM records WHERE seq > ?", (keep,))
                copy.execute("DELETE FROM checkpoints WHERE seq > ?", (keep,))
                copy.commit()
    return target


async def drill(data_dir: Path, restored_dir: Path, tsa: Tsa, anchor: dict[str, Any] | None) -> CheckResult:
    audit: dict[str, Any] = {"verify_processes": 1, "timestamp": {"url": tsa.url, "certificates": [str(tsa.ca_path)]}}
    if anchor is not None:
        audit["anchor"] = anchor
    config = {
        "data_dir": str(data_dir),
        "key_file": "audit/keys/kek.key",  # where the test trail keeps its KEK
        "upstream": {"url": "http://127.0.0.1:8000"},
        "audit": audit,
    }
    (data_dir / "sentinel.yaml").write_text(yaml.safe_dump(config))
    check = AuditTrailCheck(load_settings(data_dir / "sentinel.yaml"))
    snapshot = Snapshot("snap-1", "audit", 0.0, sources=[SourceRecord("audit", "sqlite", {"database": "store.db"})])
    return await asyncio.to_thread(check.run, restored_dir, snapshot)


async def test_a_drill_verifies_an_older_backup_against_what_was_anchored_up_to_it(
    anchored: Anchored, seaweed: Seaweed, tsa: Tsa, tmp_path: Path
) -> None:
    restored(anchored, tmp_path / "restored", keep=20)
    result = await drill(tmp_path / "data", tmp_path / "restored", tsa, anchor_settings(seaweed, anchored.bucket))
    assert result.passed, result.detail
    assert "20 records in 1 chain(s) verify" in result.detail
    assert (
        f"against the 3 up to the restored records, of 5 checkpoints anchored in s3://{anchored.bucket}/anchors/"
        in result.detail
    )
    (evidence,) = result.evidence["anchors"]
    assert evidence["configured"] is True and evidence["restored_heads"] == {"node-a": 20}
    assert (evidence["anchored"], evidence["time_stamped"], evidence["findings"]) == (5, 1, [])
    assert evidence["chains"][0]["size"] == 29 and evidence["chains"][0]["time_stamped_at"] is not None


async def test_a_drill_fails_on_a_backup_rewritten_and_re_signed_with_the_real_key(
    anchored: Anchored, seaweed: Seaweed, tsa: Tsa, tmp_path: Path
) -> None:
    store = restored(anchored, tmp_path / "restored")
    rewrite(store, "node-a", 3, anchored.signer())
    unanchored = await drill(tmp_path / "data", tmp_path / "restored", tsa, None)
    assert unanchored.passed, unanchored.detail  # the blind spot, which the drill names
    assert "not against anchors (audit.anchor is not configured)" in unanchored.detail
    assert unanchored.evidence["anchors"][0]["statement"] == NOT_ANCHORED

    failed = await drill(tmp_path / "data", tmp_path / "restored", tsa, anchor_settings(seaweed, anchored.bucket))
    assert not failed.passed
    assert "DO NOT verify" in failed.detail and "anchor_mismatch at node-a:8" in failed.detail


async def test_a_drill_whose_anchors_cannot_be_read_fails_and_says_why(
    anchored: Anchored, seaweed: Seaweed, tsa: Tsa, tmp_path: Path
) -> None:
    restored(anchored, tmp_path / "restored")
    (port,) = free_ports(1)
    gone = anchor_settings(seaweed, anchored.bucket, endpoint_url=f"http://127.0.0.1:{port}")
    result = await drill(tmp_path / "data", tmp_path / "restored", tsa, gone)
    assert not result.passed
    assert "NOT against the anchors (they could not be read)" in result.detail
    assert "cannot verify against the anchors: cannot reach the S3 anchor" in result.detail
