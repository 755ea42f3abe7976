"""Backup then restore, on the local target and on a real SeaweedFS: bytes, modes, links, dedup, resume."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sentinel.backup.jobs import run_backup
from sentinel.backup.restore import Restorer
from sentinel.backup.verify import verify_snapshot
from tests.backup.conftest import MakeContext, write_model
from tests.support.seaweed import Seaweed


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + f":{oct(path.stat().st_mode & 0o777)}"
    return out


@pytest.mark.parametrize("where", ["local", "s3"])
def test_model_directory_round_trip_and_dedup(
    where: str, make_context: MakeContext, tmp_path: Path, seaweed: Seaweed
) -> None:
    models = tmp_path / "models"
    write_model(models, {"ds-r1/model-00001.safetensors": 3_000_000, "ds-r1/model-00002.safetensors": 2_500_000})
    (models / "ds-r1" / "config.json").write_text('{"arch": "deepseek"}')
    os.chmod(models / "ds-r1" / "config.json", 0o640)
    (models / "latest").symlink_to("ds-r1")
    (models / "empty.bin").write_bytes(b"")
    targets = (
        {"default": {"kind": "local"}} if where == "local" else {"default": seaweed.target_settings(seaweed.bucket())}
    )
    context = make_context(
        plans={"models": {"sources": [{"kind": "path", "path": str(models)}]}},
        targets=targets,
        chunk_min_size=16 * 1024,
        chunk_avg_size=64 * 1024,
        chunk_max_size=256 * 1024,
    )

    first = run_backup(context, "models")
    assert first.outcome == "success", first.error
    assert first.snapshot is not None and first.stats is not None
    assert first.snapshot.size == 5_500_000 + len('{"arch": "deepseek"}')
    assert first.stats.uploaded_bytes > first.snapshot.size  # all new, plus per-chunk overhead

    # Unchanged directory: nothing is read or uploaded again.
    second = run_backup(context, "models")
    assert second.outcome == "success" and second.stats is not None
    assert second.stats.uploaded_bytes == 0 and second.stats.bytes_read == 0

    # One edit in the middle of a big file: only the chunks around it go up.
    path = models / "ds-r1" / "model-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[1_500_000:1_500_010] = b"0123456789"
    path.write_bytes(bytes(data))
    third = run_backup(context, "models")
    assert third.outcome == "success" and third.stats is not None and third.snapshot is not None
    assert 0 < third.stats.uploaded_bytes < 600_000, third.stats

    repo = context.repository("models")
    assert [s.id for s in repo.snapshots("models")] == [first.snapshot.id, second.snapshot.id, third.snapshot.id]
    report = verify_snapshot(repo, third.snapshot, read_data=True)
    assert report.ok and report.files_checked == 4

    dest = tmp_path / "restored"
    result = Restorer(repo).restore(repo.resolve("latest"), dest)
    assert result.files == 4 and result.verified == 4
    assert tree_digest(dest / "path") == tree_digest(models)
    # The first snapshot still restores the old bytes.
    Restorer(repo).restore(repo.resolve(first.snapshot.id[:20]), tmp_path / "old")
    assert (tmp_path / "old/path/ds-r1/model-00001.safetensors").read_bytes()[1_500_000:1_500_010] != b"0123456789"
