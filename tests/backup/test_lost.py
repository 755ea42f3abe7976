"""Missing and damaged snapshots on /metrics, and acknowledging a permanent loss (`backup forget --lost`).

An operator must learn from /metrics (and the SentinelBackupSnapshotsMissing alert) that a snapshot the
signed index names is gone or does not authenticate; prune deletes no chunk meanwhile. Once the loss is
acknowledged, signed into the index with the repository key, it is reported as such and prune resumes.
Whoever holds only the S3 credentials cannot forge that acknowledgment. On a real SeaweedFS bucket with
Object Lock; the snapshot is removed as a lock that ran out (or an admin bypassing GOVERNANCE) allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from sentinel.backup import index
from sentinel.backup.drill import RestoreDrill
from sentinel.backup.jobs import BackupContext, run_prune
from sentinel.backup.metrics import BackupCollector
from sentinel.backup.repository import RepositoryError, snapshot_key
from tests.backup.conftest import MakeContext, write_model
from tests.backup.test_cli import sentinel
from tests.backup.test_tamper import MODEL, SMALL_CHUNKS, backup
from tests.support.seaweed import Seaweed

REASON = "INC-42: versions deleted after the lock ran out"


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


def samples(context: BackupContext) -> Callable[[str], float | None]:
    registry = CollectorRegistry()
    registry.register(BackupCollector(context.run_log(), context.backup.plans))
    return lambda name: registry.get_sample_value(name, {"plan": "models"})


def governance_context(make_context: MakeContext, seaweed: Seaweed, bucket: str, models: Path) -> BackupContext:
    target = seaweed.target_settings(bucket, object_lock_mode="GOVERNANCE", object_lock_days=1)
    return make_context(
        plans={"models": {"sources": [{"kind": "path", "path": str(models)}], "retention": {"keep_last": 1}}},
        targets={"default": target},
        **SMALL_CHUNKS,
    )


def erase(client: Any, bucket: str, key: str) -> None:
    """Every version of `key` gone, as an expired lock (or a bypass of GOVERNANCE) allows."""
    listed = client.list_object_versions(Bucket=bucket, Prefix=key)
    for version in [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])]:
        if version["Key"] == key:
            client.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"], BypassGovernanceRetention=True)
    assert not client.list_object_versions(Bucket=bucket, Prefix=key).get("Versions")


def forge_entries(client: Any, bucket: str, snapshot_id: str) -> None:
    """What the holder of the S3 credentials can write: index entries acknowledging the loss, signed
    with a key of their own, and a replay of the repository's newest genuine entry under the next number."""
    keys = sorted(v["Key"] for v in client.list_objects_v2(Bucket=bucket, Prefix=index.PREFIX)["Contents"])
    genuine = client.get_object(Bucket=bucket, Key=keys[-1])["Body"].read()
    highest = int(keys[-1].removeprefix(index.PREFIX))
    body = orjson.loads(genuine[len(index.MAGIC) + index.SIGNATURE_BYTES :])
    lost = {snapshot_id: {"plan": "models", "reason": "forged", "was": "missing", "at": 0.0, "by": "mallory"}}
    forged = index.IndexEntry(highest + 1, body["snapshots"], body["started"], body["config"], 0.0, lost)
    client.put_object(
        Bucket=bucket, Key=index.entry_key(highest + 1), Body=index.encode(forged, Ed25519PrivateKey.generate())
    )
    # The genuine signature over a body that claims the loss: the body no longer matches it.
    tampered = genuine[: len(index.MAGIC) + index.SIGNATURE_BYTES] + orjson.dumps({**body, "lost": lost})
    client.put_object(Bucket=bucket, Key=index.entry_key(highest + 2), Body=tampered)
    client.put_object(Bucket=bucket, Key=index.entry_key(highest + 3), Body=genuine)


def test_a_missing_snapshot_shows_on_metrics_blocks_prune_and_only_a_signed_acknowledgment_clears_it(
    make_context: MakeContext,
    seaweed: Seaweed,
    attacker: Any,
    models: Path,
) -> None:
    bucket = seaweed.bucket(lock=True)
    context = governance_context(make_context, seaweed, bucket, models)
    first = backup(context).snapshot
    write_model(models, MODEL, seed=2)
    previous = backup(context).snapshot
    write_model(models, MODEL, seed=3)
    newest = backup(context).snapshot
    assert first is not None and previous is not None and newest is not None
    metric = samples(context)
    assert metric("sentinel_backup_snapshots_missing") == 0  # each backup looked at the repository
    assert metric("sentinel_backup_snapshots_damaged") == 0
    erase(attacker, bucket, snapshot_key(newest.id))

    repo = context.repository("models")
    assert repo.catalog().missing == {newest.id: "models"}
    assert metric("sentinel_backup_snapshots_missing") == 1
    assert metric("sentinel_backup_index_cut_back") == 0
    assert metric("sentinel_backup_snapshots_lost_acknowledged") == 0
    pruned = run_prune(context, "models")["default"]
    assert pruned.chunks_deleted == 0 and any(newest.id in e for e in pruned.errors)

    forge_entries(attacker, bucket, newest.id)
    repo = context.repository("models")
    catalog = repo.catalog()
    assert catalog.missing == {newest.id: "models"} and catalog.lost == {}
    assert len([n for n in catalog.notes if "signature does not verify" in n]) == 3
    assert metric("sentinel_backup_snapshots_missing") == 1
    assert run_prune(context, "models")["default"].chunks_deleted == 0
    assert not RestoreDrill(context, "models").run().passed

    with pytest.raises(RepositoryError, match="intact"):
        repo.acknowledge_lost(previous.id, REASON)
    with pytest.raises(RepositoryError, match="--reason"):
        repo.acknowledge_lost(newest.id, "  ")
    assert repo.acknowledge_lost(newest.id[:20], REASON, by="ops") == newest.id

    catalog = context.repository("models").catalog()
    assert catalog.intact and catalog.problems() == [] and catalog.missing == {}
    assert catalog.lost[newest.id]["reason"] == REASON and catalog.lost[newest.id]["was"] == "missing"
    assert any(newest.id in line and REASON in line and "ops" in line for line in catalog.acknowledged())
    assert metric("sentinel_backup_snapshots_missing") == 0
    assert metric("sentinel_backup_snapshots_lost_acknowledged") == 1
    with pytest.raises(RepositoryError, match="already acknowledged"):
        context.repository("models").acknowledge_lost(newest.id, REASON)
    assert context.repository("models").resolve("latest", "models").id == previous.id  # the newest intact one

    drill = RestoreDrill(context, "models").run()
    assert drill.passed and drill.snapshot == previous.id
    assert any(newest.id in line for line in drill.acknowledged)
    pruned = run_prune(context, "models")["default"]
    assert not pruned.errors
    assert first.id in [k.removeprefix("snapshots/") for k, _ in pruned.locked]  # locked, so kept: reported
    # The acknowledgment is carried into every later entry: a new backup does not undo it.
    write_model(models, MODEL, seed=4)
    backup(context)
    assert newest.id in context.repository("models").catalog().lost


def test_a_damaged_snapshot_is_acknowledged_from_the_cli_and_listed_as_such(
    make_context: MakeContext,
    models: Path,
    data_dir: Path,
) -> None:
    context = make_context(
        plans={"models": {"sources": [{"kind": "path", "path": str(models)}], "retention": {"keep_last": 1}}},
        targets={"default": {"kind": "local"}},
        **SMALL_CHUNKS,
    )
    old = backup(context).snapshot
    write_model(models, MODEL, seed=2)
    newest = backup(context).snapshot
    assert old is not None and newest is not None
    (data_dir / "backups" / snapshot_key(old.id)).write_bytes(b"garbage")  # no versions here to read past
    plans = orjson.dumps({"models": {"sources": [{"kind": "path", "path": str(models)}]}}).decode()
    env = {"SENTINEL_BACKUP_PLANS": plans}

    listed = sentinel(data_dir, "backup", "list", **env)
    assert listed.returncode == 1 and "DAMAGED" in listed.stdout
    assert samples(context)("sentinel_backup_snapshots_damaged") == 1
    no_flag = sentinel(data_dir, "backup", "forget", old.id, "--reason", REASON, **env)
    assert no_flag.returncode == 2 and "--lost" in no_flag.stderr
    intact = sentinel(data_dir, "backup", "forget", newest.id, "--lost", "--reason", REASON, **env)
    assert intact.returncode == 1 and "intact" in intact.stderr
    unknown = sentinel(data_dir, "backup", "forget", "1999", "--lost", "--reason", REASON, **env)
    assert unknown.returncode == 1 and "no missing or damaged snapshot" in unknown.stderr

    forgot = sentinel(data_dir, "backup", "forget", old.id, "--lost", "--reason", REASON, **env)
    assert forgot.returncode == 0, forgot.stderr
    listed = sentinel(data_dir, "backup", "list", **env)
    assert listed.returncode == 0, listed.stderr
    assert "lost (acknowledged)" in listed.stdout and "DAMAGED" not in listed.stdout
    assert REASON in listed.stderr and "damaged" in listed.stderr
    verified = sentinel(data_dir, "backup", "verify", newest.id, **env)
    assert verified.returncode == 0, verified.stderr
    metric = samples(context)
    assert metric("sentinel_backup_snapshots_damaged") == 0
    assert metric("sentinel_backup_snapshots_lost_acknowledged") == 1
    assert not run_prune(context, "models")["default"].errors
    with pytest.raises(RepositoryError, match=old.id):  # still not restorable: acknowledged, not repaired
        context.repository("models").resolve(old.id)
