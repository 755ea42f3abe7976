"""Failures, each on real parts: S3 going away mid-upload, corrupt and missing chunks, a full disk."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError

from sentinel.backup.jobs import BackupContext, run_backup
from sentinel.backup.lease import live_leases
from sentinel.backup.progress import Progress
from sentinel.backup.repository import chunk_key
from sentinel.backup.restore import RestoreError, Restorer
from sentinel.backup.targets import Target
from sentinel.backup.targets.s3 import S3Target
from sentinel.backup.verify import verify_snapshot
from tests.backup.conftest import FakeClock, MakeContext, write_model
from tests.support.seaweed import Seaweed
from tests.support.tcpproxy import TcpProxy

SMALL_CHUNKS = {"chunk_min_size": 16 * 1024, "chunk_avg_size": 64 * 1024, "chunk_max_size": 256 * 1024}


class CutAt(Progress):
    """Calls `action` once, when `threshold` bytes have been read from the sources."""

    def __init__(self, threshold: int, action: Any) -> None:
        self.threshold, self.action, self.seen, self.fired = threshold, action, 0, False

    def advance(self, amount: int) -> None:
        self.seen += amount
        if not self.fired and self.seen >= self.threshold:
            self.fired = True
            self.action()


def s3_context(
    make_context: MakeContext,
    seaweed: Seaweed,
    endpoint: str,
    bucket: str,
    models: Path,
    attempts: int = 3,
    clock: FakeClock | None = None,
) -> BackupContext:
    target = seaweed.target_settings(
        bucket, endpoint_url=endpoint, max_attempts=attempts, connect_timeout=1, read_timeout=5
    )
    context = make_context(
        plans={"models": {"sources": [{"kind": "path", "path": str(models)}]}},
        targets={"default": target},
        upload_concurrency=2,
        lease_ttl=5,
        **SMALL_CHUNKS,
    )
    return context if clock is None else BackupContext(context.settings, clock=clock)


class RetryWatchingContext(BackupContext):
    """Calls `on_failed_attempt` (once per failed S3 request attempt, before botocore retries it)."""

    def __init__(self, context: BackupContext, on_failed_attempt: Any) -> None:
        super().__init__(context.settings, context.clock)
        self.on_failed_attempt = on_failed_attempt

    def target(self, plan: str) -> Target:
        target = super().target(plan)
        assert isinstance(target, S3Target)

        def needs_retry(caught_exception: Exception | None = None, **_: Any) -> None:
            if isinstance(caught_exception, BotoCoreError):
                self.on_failed_attempt()

        target.client.meta.events.register("needs-retry.s3", needs_retry)
        return target


def test_s3_outage_mid_upload_fails_cleanly_and_the_next_run_resumes(
    make_context: MakeContext, seaweed: Seaweed, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_model(models, {"a.safetensors": 2_000_000, "b.safetensors": 2_000_000})
    bucket = seaweed.bucket()
    proxy = TcpProxy("127.0.0.1", int(seaweed.endpoint.rsplit(":", 1)[1]))
    try:
        clock = FakeClock()  # lease expiry follows this clock, not the time the test takes
        context = s3_context(make_context, seaweed, proxy.url, bucket, models, clock=clock)
        failed = run_backup(context, "models", progress=CutAt(2_000_000, proxy.cut))
        assert failed.outcome == "failure"
        assert "127.0.0.1" in str(failed.error)  # says which endpoint failed
        direct = s3_context(make_context, seaweed, seaweed.endpoint, bucket, models).repository("models")
        assert direct.snapshots() == []  # the partial snapshot is not listed
        stored_after_failure = set(direct.chunk_sizes())
        assert stored_after_failure  # some chunks made it before the cut
        assert context.run_log().latest("backup")["models"].outcome == "failure"

        proxy.restore()
        # The failed run could not release its lease while S3 was away; like a crashed run's, it expires.
        assert [lease.name for lease in live_leases(direct.target, now=clock())] == ["backup-models"]
        clock.advance(context.backup.lease_ttl + 0.1)
        assert live_leases(direct.target, now=clock()) == []
        sent_before = proxy.bytes_up
        resumed = run_backup(context, "models")
        assert resumed.outcome == "success", resumed.error
        assert resumed.snapshot is not None and resumed.stats is not None
        all_chunks = resumed.snapshot.chunk_ids()
        # Only the chunks that were missing went up; finished ones were not uploaded again.
        assert resumed.stats.chunks_new == len(all_chunks - stored_after_failure)
        assert resumed.stats.chunks_reused == len(all_chunks & stored_after_failure)
        assert proxy.bytes_up - sent_before < 4_000_000
        assert [s.id for s in direct.snapshots()] == [resumed.snapshot.id]
    finally:
        proxy.close()


def test_a_short_outage_is_ridden_out_by_retries(make_context: MakeContext, seaweed: Seaweed, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_model(models, {"a.safetensors": 1_500_000})
    proxy = TcpProxy("127.0.0.1", int(seaweed.endpoint.rsplit(":", 1)[1]))
    try:
        lock = threading.Lock()
        outage = {"cut": False, "failed_attempts": 0}

        def cut() -> None:
            with lock:
                proxy.cut()
                outage["cut"] = True

        def failed_attempt() -> None:  # the outage lasts until a request has failed on it, then ends
            with lock:
                if outage["cut"]:
                    outage["failed_attempts"] += 1
                    if outage["failed_attempts"] == 1:
                        proxy.restore()

        plain = s3_context(make_context, seaweed, proxy.url, seaweed.bucket(), models, attempts=10)
        context = RetryWatchingContext(plain, failed_attempt)
        outcome = run_backup(context, "models", progress=CutAt(500_000, cut))
        assert outage["failed_attempts"] >= 1  # requests did fail during the outage: the retries rode it out
        assert outcome.outcome == "success", outcome.error
        assert outcome.snapshot is not None
        report = verify_snapshot(context.repository("models"), outcome.snapshot, read_data=True)
        assert report.ok, report.problems
    finally:
        proxy.close()


@pytest.fixture
def backed_up(make_context: MakeContext, tmp_path: Path) -> tuple[BackupContext, Any]:
    models = tmp_path / "models"
    write_model(models, {"a.bin": 600_000, "b.bin": 600_000, "c.bin": 300_000})
    context = make_context(plans={"models": {"sources": [{"kind": "path", "path": str(models)}]}}, **SMALL_CHUNKS)
    outcome = run_backup(context, "models")
    assert outcome.outcome == "success", outcome.error
    return context, outcome.snapshot


def test_corrupt_and_missing_chunks_are_named_by_verify_and_restore(
    backed_up: tuple[BackupContext, Any], data_dir: Path, tmp_path: Path
) -> None:
    context, snapshot = backed_up
    repo = context.repository("models")
    files = {f.path: f for f in snapshot.files}
    corrupt = files["a.bin"].chunks[1].id
    missing = files["b.bin"].chunks[0].id
    path = data_dir / "backups" / chunk_key(corrupt)
    blob = bytearray(path.read_bytes())
    blob[100] ^= 0xFF
    path.write_bytes(bytes(blob))
    (data_dir / "backups" / chunk_key(missing)).unlink()

    quick = verify_snapshot(repo, snapshot)
    assert [(p.chunk_id, p.files, p.what) for p in quick.problems] == [(missing, ["path/b.bin"], "missing")]
    full = verify_snapshot(repo, snapshot, read_data=True)
    described = {p.chunk_id: p.describe() for p in full.problems}
    assert set(described) == {corrupt, missing}
    assert "path/a.bin" in described[corrupt] and "authentication failed" in described[corrupt]
    assert full.files_checked == 1  # c.bin, the only intact file

    with pytest.raises(RestoreError) as caught:
        Restorer(repo).restore(snapshot, tmp_path / "r", select=lambda e: e.path == "a.bin")
    assert caught.value.chunk_id == corrupt and caught.value.path == "path/a.bin"
    assert corrupt in str(caught.value) and "path/a.bin" in str(caught.value)
    assert list((tmp_path / "r" / "path").iterdir()) == []  # no partial or wrong file left behind

    cli = run_cli(context, "backup", "verify", "latest")
    assert cli.returncode == 1
    assert f"chunk {missing} (path/b.bin): missing" in cli.stderr
    cli = run_cli(context, "backup", "restore", "latest", "--target", str(tmp_path / "r2"))
    assert cli.returncode == 1 and ("path/a.bin" in cli.stderr or "path/b.bin" in cli.stderr)


def run_cli(context: BackupContext, *args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env["SENTINEL_DATA_DIR"] = str(context.settings.data_dir)
    env["SENTINEL_BACKUP_PLANS"] = context.settings.backup.model_dump_json(include={"plans"})[len('{"plans":') : -1]
    env["COLUMNS"] = "200"
    command = [*(prefix or []), sys.executable, "-m", "sentinel", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_disk_full_during_restore_fails_cleanly(backed_up: tuple[BackupContext, Any], tmp_path: Path) -> None:
    """A real ENOSPC: the restore runs in its own mount namespace on a 256 KiB tmpfs (unshare, util-linux)."""
    context, _ = backed_up
    mount = tmp_path / "small"
    mount.mkdir()
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    script = 'mount -t tmpfs -o size=256k tmpfs "$0" && "$@"; rc=$?; echo "left: $(ls -A "$0/out/path")"; exit $rc'
    result = run_cli(
        context,
        "backup",
        "restore",
        "latest",
        "--target",
        str(mount / "out"),
        prefix=["unshare", *user, "--mount", "sh", "-c", script, str(mount)],
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "disk full while restoring" in result.stderr
    assert "left: \n" in result.stdout or result.stdout.strip().endswith("left:")  # nothing half-written remains
