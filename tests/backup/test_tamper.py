"""Backups against whoever holds the S3 credentials but not the backup key (ransomware, an insider).

Each attack is made with the same credentials Sentinel uses, on a real SeaweedFS bucket with Object
Lock (COMPLIANCE): what the server allows (new versions, delete markers) must change nothing that
is restored, and what it cannot stop elsewhere (a local or unlocked target) is named, never hidden.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from sentinel.backup.drill import RestoreDrill
from sentinel.backup.jobs import BackupContext, BackupOutcome, run_backup, run_prune
from sentinel.backup.repository import (
    CONFIG_KEY,
    Repository,
    SnapshotUnavailable,
    chunk_key,
    snapshot_key,
)
from sentinel.backup.restore import Restorer
from sentinel.backup.verify import verify_snapshot
from tests.backup.conftest import FakeClock, MakeContext, write_model
from tests.backup.test_cli import sentinel
from tests.support.seaweed import Seaweed

SMALL_CHUNKS = {"chunk_min_size": 16 * 1024, "chunk_avg_size": 64 * 1024, "chunk_max_size": 256 * 1024}
MODEL = {"model.safetensors": 600_000, "tokenizer.json": 40_000}
DAY = 86400.0


def locked_context(
    make_context: MakeContext, seaweed: Seaweed, bucket: str, models: Path, clock: FakeClock | None = None, **extra: Any
) -> BackupContext:
    target = seaweed.target_settings(bucket, object_lock_mode="COMPLIANCE", object_lock_days=1, **extra)
    context = make_context(
        plans={"models": {"sources": [{"kind": "path", "path": str(models)}], "retention": {"keep_last": 1}}},
        targets={"default": target},
        **SMALL_CHUNKS,
    )
    return context if clock is None else BackupContext(context.settings, clock=clock)


def local_context(make_context: MakeContext, models: Path) -> BackupContext:
    return make_context(
        plans={"models": {"sources": [{"kind": "path", "path": str(models)}], "retention": {"keep_last": 1}}},
        targets={"default": {"kind": "local"}},
        **SMALL_CHUNKS,
    )


def backup(context: BackupContext) -> BackupOutcome:
    outcome = run_backup(context, "models")
    assert outcome.outcome == "success", outcome.error
    assert outcome.snapshot is not None
    return outcome


def restored_matches(context: BackupContext, dest: Path, models: Path, ref: str = "latest") -> str:
    repo = context.repository("models")
    snapshot = repo.resolve(ref, "models")
    Restorer(repo).restore(snapshot, dest)
    for name in MODEL:
        assert (dest / "path" / name).read_bytes() == (models / name).read_bytes(), name
    return snapshot.id


def versions(client: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    listed = client.list_object_versions(Bucket=bucket, Prefix=key)
    return [v for v in listed.get("Versions", []) if v["Key"] == key]


@pytest.fixture
def attacker(seaweed: Seaweed) -> Iterator[Any]:
    """An S3 client with the very credentials Sentinel's backups use."""
    client = seaweed.client()
    yield client
    client.close()


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    write_model(path, MODEL)
    return path


def test_every_object_version_in_the_bucket_is_locked_leases_and_config_included(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, models: Path
) -> None:
    bucket = seaweed.bucket(lock=True)
    context = locked_context(make_context, seaweed, bucket, models)
    backup(context)
    write_model(models, {"tokenizer.json": 40_000}, seed=2)
    backup(context)
    client = attacker
    listed = client.list_object_versions(Bucket=bucket)["Versions"]
    keys = {v["Key"].split("/")[0] for v in listed}
    assert {"config", "chunks", "snapshots", "index", "locks"} <= keys
    unlocked = []
    for version in listed:
        head = client.head_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        if head.get("ObjectLockMode") != "COMPLIANCE" or head["ObjectLockRetainUntilDate"] <= datetime.now(UTC):
            unlocked.append(version["Key"])
    assert unlocked == [], f"{len(unlocked)} of {len(listed)} versions without retention: {unlocked[:5]}"


def test_config_survives_deleting_its_versions_a_delete_marker_and_a_forged_replacement(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, models: Path, tmp_path: Path
) -> None:
    bucket = seaweed.bucket(lock=True)
    context = locked_context(make_context, seaweed, bucket, models)
    first = backup(context)
    original = context.repository("models").id
    for version in versions(attacker, bucket, CONFIG_KEY):
        with pytest.raises(ClientError, match="AccessDenied"):
            attacker.delete_object(Bucket=bucket, Key=CONFIG_KEY, VersionId=version["VersionId"])
    attacker.delete_object(Bucket=bucket, Key=CONFIG_KEY)  # allowed: a delete marker on top
    forged = orjson.loads(
        attacker.get_object(Bucket=bucket, Key=CONFIG_KEY, VersionId=version["VersionId"])["Body"].read()
    )
    forged["id"] = "f" * 32  # a new repository id: every chunk would fail to authenticate under it
    attacker.put_object(Bucket=bucket, Key=CONFIG_KEY, Body=orjson.dumps(forged))

    second = backup(context)  # not a silent new repository: the same one, from the locked config
    repo = context.repository("models")
    assert repo.id == original
    assert [s.id for s in repo.snapshots("models")] == [first.snapshot.id, second.snapshot.id]  # type: ignore[union-attr]
    assert verify_snapshot(repo, second.snapshot, read_data=True).ok  # type: ignore[arg-type]
    restored_matches(context, tmp_path / "out", models)


def test_a_vanished_config_is_an_error_with_a_recovery_command_never_a_new_repository(
    make_context: MakeContext, models: Path, data_dir: Path, tmp_path: Path
) -> None:
    # Where nothing stops the delete (a local directory, an unlocked bucket, a lock that expired).
    context = local_context(make_context, models)
    first = backup(context)
    repo_dir = data_dir / "backups"
    (repo_dir / CONFIG_KEY).unlink()

    failed = run_backup(context, "models")
    assert failed.outcome == "failure"
    assert "config" in str(failed.error) and "missing" in str(failed.error)
    assert "sentinel backup recover-config" in str(failed.error)
    assert not (repo_dir / CONFIG_KEY).exists()  # nothing was created on top of the old chunks

    plans = orjson.dumps({"models": {"sources": [{"kind": "path", "path": str(models)}]}}).decode()
    ran = sentinel(data_dir, "backup", "run", "models", SENTINEL_BACKUP_PLANS=plans)
    assert ran.returncode == 1 and "recover-config" in ran.stderr and "Traceback" not in ran.stderr
    recovered = sentinel(data_dir, "backup", "recover-config", SENTINEL_BACKUP_PLANS=plans)
    assert recovered.returncode == 0, recovered.stderr

    second = backup(context)
    repo = context.repository("models")
    assert [s.id for s in repo.snapshots()] == [first.snapshot.id, second.snapshot.id]  # type: ignore[union-attr]
    assert verify_snapshot(repo, second.snapshot, read_data=True).ok  # type: ignore[arg-type]

    # A config replaced by one that does not authenticate is refused the same way.
    (repo_dir / CONFIG_KEY).write_bytes(orjson.dumps({**repo.config, "id": "0" * 32}))
    refused = run_backup(context, "models")
    assert refused.outcome == "failure" and "does not authenticate" in str(refused.error)
    # Nor is an unsigned one (as configs were before they were signed) naming another repository.
    legacy = {k: v for k, v in repo.config.items() if k != "signature"}
    (repo_dir / CONFIG_KEY).write_bytes(orjson.dumps({**legacy, "id": "0" * 32}))
    refused = run_backup(context, "models")
    assert refused.outcome == "failure" and "does not authenticate" in str(refused.error)
    (repo_dir / CONFIG_KEY).write_bytes(orjson.dumps(legacy))  # the same repository, unsigned: accepted
    assert context.repository("models").id == repo.id


def test_a_delete_marker_on_the_newest_snapshot_hides_nothing(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, models: Path, tmp_path: Path
) -> None:
    bucket = seaweed.bucket(lock=True)
    context = locked_context(make_context, seaweed, bucket, models)
    backup(context)
    write_model(models, MODEL, seed=2)
    newest = backup(context).snapshot
    assert newest is not None
    attacker.delete_object(Bucket=bucket, Key=snapshot_key(newest.id))  # version-less: allowed
    entries = sorted(o["Key"] for o in attacker.list_objects_v2(Bucket=bucket, Prefix="index/")["Contents"])
    attacker.delete_object(Bucket=bucket, Key=entries[-1])  # and the index entry that names it
    attacker.put_object(Bucket=bucket, Key=entries[-2], Body=b"an index without the newest snapshot")

    assert restored_matches(context, tmp_path / "out", models) == newest.id
    catalog = context.repository("models").catalog()
    assert catalog.intact and catalog.snapshots[-1].id == newest.id
    assert any(newest.id in note and "delete marker" in note for note in catalog.notes)
    report = RestoreDrill(context, "models").run()
    assert report.passed and report.snapshot == newest.id, report.failures


def test_a_new_version_or_delete_marker_on_a_chunk_changes_nothing_restored(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, models: Path, tmp_path: Path
) -> None:
    bucket = seaweed.bucket(lock=True)
    context = locked_context(make_context, seaweed, bucket, models)
    snapshot = backup(context).snapshot
    assert snapshot is not None
    chunks = [ref.id for entry in snapshot.files for ref in entry.chunks]
    attacker.put_object(Bucket=bucket, Key=chunk_key(chunks[0]), Body=b"ransom note")
    other = attacker.get_object(Bucket=bucket, Key=chunk_key(chunks[1]))["Body"].read()
    attacker.put_object(Bucket=bucket, Key=chunk_key(chunks[2]), Body=other)  # a real chunk, wrong place
    attacker.delete_object(Bucket=bucket, Key=chunk_key(chunks[3]))

    repo = context.repository("models")
    report = verify_snapshot(repo, snapshot, read_data=True)
    assert report.ok, [p.describe() for p in report.problems]
    restored_matches(context, tmp_path / "out", models)
    # Even a reader without the version ids (an old manifest) finds the authentic version.
    assert repo.get_chunk(chunks[0]) and repo.get_chunk(chunks[3])


def test_garbage_over_an_old_manifest(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, models: Path, tmp_path: Path
) -> None:
    bucket = seaweed.bucket(lock=True)
    context = locked_context(make_context, seaweed, bucket, models)
    old = backup(context).snapshot
    write_model(models, MODEL, seed=2)
    newest = backup(context).snapshot
    assert old is not None and newest is not None
    attacker.put_object(Bucket=bucket, Key=snapshot_key(old.id), Body=b"\x00garbage")

    repo = context.repository("models")
    catalog = repo.catalog()
    assert catalog.intact and [s.id for s in catalog.snapshots] == [old.id, newest.id]
    assert repo.load_snapshot(old.id).files == old.files
    assert restored_matches(context, tmp_path / "out", models) == newest.id
    assert RestoreDrill(context, "models").run().passed


def test_a_forged_newer_snapshot_object_does_not_block_latest(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, models: Path, tmp_path: Path
) -> None:
    bucket = seaweed.bucket(lock=True)
    context = locked_context(make_context, seaweed, bucket, models)
    newest = backup(context).snapshot
    assert newest is not None
    forged = "29991231T235959Z-00000000"  # sorts after every real snapshot
    attacker.put_object(Bucket=bucket, Key=snapshot_key(forged), Body=b"SNM\x01" + b"\x00" * 200)

    catalog = context.repository("models").catalog()
    assert catalog.intact and [s.id for s in catalog.snapshots] == [newest.id]
    assert any(forged in note for note in catalog.notes)
    assert restored_matches(context, tmp_path / "out", models) == newest.id


def test_without_versions_a_corrupt_manifest_affects_only_its_own_snapshot(
    make_context: MakeContext, models: Path, data_dir: Path, tmp_path: Path
) -> None:
    context = local_context(make_context, models)
    old = backup(context).snapshot
    write_model(models, MODEL, seed=2)
    newest = backup(context).snapshot
    assert old is not None and newest is not None
    (data_dir / "backups" / snapshot_key(old.id)).write_bytes(b"garbage")

    repo = context.repository("models")
    catalog = repo.catalog()
    assert [s.id for s in catalog.snapshots] == [newest.id] and list(catalog.damaged) == [old.id]
    assert restored_matches(context, tmp_path / "out", models) == newest.id
    assert backup(context).outcome == "success"  # today's backup is not stopped by it
    plans = orjson.dumps({"models": {"sources": [{"kind": "path", "path": str(models)}]}}).decode()
    listed = sentinel(data_dir, "backup", "list", SENTINEL_BACKUP_PLANS=plans)
    assert listed.returncode == 1 and newest.id in listed.stdout and "DAMAGED" in listed.stdout
    assert old.id in listed.stderr


def test_a_deleted_newest_snapshot_is_named_and_latest_never_rolls_back(
    make_context: MakeContext, models: Path, data_dir: Path, tmp_path: Path
) -> None:
    # Where the delete succeeds (no Object Lock, or after the lock ran out): the signed index names it.
    context = local_context(make_context, models)
    previous = backup(context).snapshot
    write_model(models, MODEL, seed=2)
    newest = backup(context).snapshot
    assert previous is not None and newest is not None
    (data_dir / "backups" / snapshot_key(newest.id)).unlink()

    repo = context.repository("models")
    assert repo.catalog().missing == {newest.id: "models"}
    with pytest.raises(SnapshotUnavailable, match=newest.id) as raised:
        repo.resolve("latest", "models")
    assert previous.id in str(raised.value)  # says what is still there, and that it must be named
    assert repo.resolve(previous.id).id == previous.id

    report = RestoreDrill(context, "models").run()
    assert not report.passed and any(newest.id in f for f in report.failures)

    plans = orjson.dumps({"models": {"sources": [{"kind": "path", "path": str(models)}]}}).decode()
    env = {"SENTINEL_BACKUP_PLANS": plans}
    listed = sentinel(data_dir, "backup", "list", **env)
    assert listed.returncode == 1 and "MISSING" in listed.stdout and newest.id in listed.stderr
    restored = sentinel(data_dir, "backup", "restore", "latest", "--target", str(tmp_path / "x"), **env)
    assert restored.returncode == 1 and newest.id in restored.stderr and not (tmp_path / "x").exists()
    verified = sentinel(data_dir, "backup", "verify", previous.id, **env)
    assert verified.returncode == 1 and newest.id in verified.stderr


def test_an_index_cut_back_with_the_newest_snapshot_is_noticed_by_the_host_that_saw_it(
    make_context: MakeContext, models: Path, data_dir: Path
) -> None:
    context = local_context(make_context, models)
    previous = backup(context).snapshot
    write_model(models, MODEL, seed=2)
    newest = backup(context).snapshot
    assert previous is not None and newest is not None
    repo_dir = data_dir / "backups"
    newest_entry = max((repo_dir / "index").iterdir())
    (repo_dir / snapshot_key(newest.id)).unlink()  # the snapshot and the index entry naming it
    newest_entry.unlink()

    catalog = context.repository("models").catalog()
    assert not catalog.intact and catalog.missing == {}
    assert catalog.rolled_back is not None and "cut back" in catalog.rolled_back
    with pytest.raises(SnapshotUnavailable, match="cut back"):
        context.repository("models").resolve("latest", "models")
    report = RestoreDrill(context, "models").run()
    assert not report.passed and any("cut back" in f for f in report.failures)


def test_prune_leaves_the_index_consistent(make_context: MakeContext, models: Path) -> None:
    context = local_context(make_context, models)
    backup(context)
    write_model(models, MODEL, seed=2)
    newest = backup(context).snapshot
    assert newest is not None
    reports = run_prune(context, "models")
    assert len(reports["default"].forgotten) == 1 and not reports["default"].errors
    catalog = context.repository("models").catalog()
    assert catalog.intact and catalog.indexed and [s.id for s in catalog.snapshots] == [newest.id]


def test_a_reused_chunk_stays_locked_as_long_as_the_newest_snapshot_using_it(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, models: Path
) -> None:
    bucket = seaweed.bucket(lock=True)
    clock = FakeClock(time.time())  # retention dates must lie ahead of the server's real clock
    context = locked_context(make_context, seaweed, bucket, models, clock=clock)
    first = backup(context).snapshot
    assert first is not None
    client = attacker

    def retained(key: str) -> float:
        version = min(versions(client, bucket, key), key=lambda v: v["LastModified"])
        return float(
            client.head_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])[
                "ObjectLockRetainUntilDate"
            ].timestamp()
        )

    reused = first.files[0].chunks[0].id
    slack = 1 * DAY  # min(object_lock_days, 7) days beyond the retention, so the next runs re-lock nothing
    assert clock() + 1 * DAY + slack <= retained(chunk_key(reused)) < clock() + 1 * DAY + slack + 60

    clock.advance(0.75 * DAY)  # within the slack: nothing to re-lock
    soon = backup(context)
    assert soon.stats is not None and soon.stats.uploaded_bytes == 0 and soon.stats.locks_extended == 0

    clock.advance(0.75 * DAY)  # past it: the unchanged model's chunks would expire before this snapshot
    taken = backup(context)
    second = taken.snapshot
    assert second is not None and taken.stats is not None and taken.stats.uploaded_bytes == 0
    assert taken.stats.locks_extended == len(second.chunk_ids())
    needed = clock() + 1 * DAY  # the second snapshot's retention
    for chunk_id in second.chunk_ids():
        assert retained(chunk_key(chunk_id)) >= needed, chunk_id
    assert retained(CONFIG_KEY) >= needed
    assert all(ref.locked_until >= needed for f in second.files for ref in f.chunks)

    clock.advance(0.5 * DAY)
    third = backup(context)
    assert third.stats is not None and third.stats.locks_extended == 0
    assert min(retained(chunk_key(c)) for c in second.chunk_ids()) >= clock() + 1 * DAY


def test_repository_open_reads_the_locked_config_version(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, models: Path
) -> None:
    bucket = seaweed.bucket(lock=True)
    context = locked_context(make_context, seaweed, bucket, models)
    backup(context)
    repo = context.repository("models")
    attacker.put_object(Bucket=bucket, Key=CONFIG_KEY, Body=b"not json")
    again = Repository.open(context.target("models"), context.key())
    assert again.id == repo.id and again.config_version == repo.config_version


def test_extending_a_compliance_lock_after_the_mode_was_changed_to_governance_fails_clearly(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, models: Path, tmp_path: Path
) -> None:
    bucket = seaweed.bucket(lock=True)
    clock = FakeClock(time.time())  # retention dates must lie ahead of the server's real clock
    first = backup(locked_context(make_context, seaweed, bucket, models, clock=clock)).snapshot
    assert first is not None
    reused = chunk_key(first.files[0].chunks[0].id)
    before = attacker.get_object_retention(Bucket=bucket, Key=reused)["Retention"]
    assert before["Mode"] == "COMPLIANCE"

    clock.advance(1.5 * DAY)  # past the slack: the next backup must extend the reused chunks' locks
    target = seaweed.target_settings(bucket, object_lock_mode="GOVERNANCE", object_lock_days=1)
    plans = {"models": {"sources": [{"kind": "path", "path": str(models)}], "retention": {"keep_last": 1}}}
    governance = BackupContext(make_context(plans=plans, targets={"default": target}, **SMALL_CHUNKS).settings, clock)
    failed = run_backup(governance, "models")
    assert failed.outcome == "failure" and failed.error is not None
    assert "locked in COMPLIANCE mode" in failed.error and "object_lock_mode is now GOVERNANCE" in failed.error
    assert "set object_lock_mode: COMPLIANCE again" in failed.error
    assert attacker.get_object_retention(Bucket=bucket, Key=reused)["Retention"] == before  # nothing weakened
    assert [s.id for s in governance.repository("models").snapshots("models")] == [first.id]

    compliance = locked_context(make_context, seaweed, bucket, models, clock=clock)
    mended = backup(compliance)  # the mode set back: the locks are extended as usual
    assert mended.stats is not None and mended.stats.locks_extended > 0
    after = attacker.get_object_retention(Bucket=bucket, Key=reused)["Retention"]
    assert after["Mode"] == "COMPLIANCE" and after["RetainUntilDate"] > before["RetainUntilDate"]
    assert mended.snapshot is not None
    assert restored_matches(compliance, tmp_path / "out", models) == mended.snapshot.id
