"""Least privilege (docs/backup.md): scheduled backups need put, get, list and retention, never the right
to delete versions or bypass governance; restores need only read and list.

A SeaweedFS of its own, with per-identity permissions (`-s3.config`), and a GOVERNANCE-mode bucket:
the mode where a credential allowed `BypassGovernanceRetention` could delete history.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sentinel.backup.jobs import BackupContext, run_backup
from sentinel.backup.repository import CONFIG_KEY
from sentinel.backup.restore import Restorer
from sentinel.backup.verify import verify_snapshot
from tests.backup.conftest import MakeContext, write_model
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, running_seaweed

SMALL_CHUNKS = {"chunk_min_size": 16 * 1024, "chunk_avg_size": 64 * 1024, "chunk_max_size": 256 * 1024}
# SeaweedFS action names (its s3_constants): what each credential may do.
IDENTITIES = {
    "admin": (ACCESS_KEY, SECRET_KEY, ["Admin", "Read", "Write", "List", "Tagging"]),
    "backup": (
        "backup-writer",
        "backup-writer-secret",
        ["Read", "Write", "List", "PutObjectRetention", "GetObjectRetention"],
    ),
    "restore": ("backup-reader", "backup-reader-secret", ["Read", "List"]),
}


@pytest.fixture(scope="module")
def guarded_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    base = tmp_path_factory.mktemp("seaweed-iam")
    config = base / "identities.json"
    config.write_text(
        orjson.dumps(
            {
                "identities": [
                    {"name": name, "credentials": [{"accessKey": key, "secretKey": secret}], "actions": actions}
                    for name, (key, secret, actions) in IDENTITIES.items()
                ]
            }
        ).decode()
    )
    with running_seaweed(base, f"-s3.config={config}") as server:
        yield server


def client_as(server: Seaweed, who: str) -> Any:
    key, secret, _ = IDENTITIES[who]
    return boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def context_as(make_context: MakeContext, server: Seaweed, bucket: str, models: Path, who: str) -> BackupContext:
    key, secret, _ = IDENTITIES[who]
    target = server.target_settings(
        bucket,
        access_key_id=key,
        secret_access_key=secret,
        object_lock_mode="GOVERNANCE",
        object_lock_days=1,
        max_attempts=1,
    )
    return make_context(
        plans={"models": {"sources": [{"kind": "path", "path": str(models)}]}},
        targets={"default": target},
        **SMALL_CHUNKS,
    )


def test_backup_credentials_cannot_delete_history_and_restore_needs_only_read(
    make_context: MakeContext, guarded_seaweed: Seaweed, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    write_model(models, {"model.safetensors": 500_000})
    bucket = guarded_seaweed.bucket(lock=True)
    writer = context_as(make_context, guarded_seaweed, bucket, models, "backup")
    first = run_backup(writer, "models")
    assert first.outcome == "success", first.error
    write_model(models, {"model.safetensors": 500_000}, seed=2)
    second = run_backup(writer, "models")  # leases released, reused chunks re-locked: all allowed
    assert second.outcome == "success", second.error

    attacker = client_as(guarded_seaweed, "backup")
    try:
        listed = attacker.list_object_versions(Bucket=bucket)["Versions"]
        for version in [v for v in listed if v["Key"] in (CONFIG_KEY, f"snapshots/{second.snapshot.id}")]:  # type: ignore[union-attr]
            with pytest.raises(ClientError, match="AccessDenied"):
                attacker.delete_object(
                    Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"], BypassGovernanceRetention=True
                )
            retained = attacker.head_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
            with pytest.raises(ClientError, match="AccessDenied"):
                attacker.put_object_retention(
                    Bucket=bucket,
                    Key=version["Key"],
                    VersionId=version["VersionId"],
                    Retention={
                        "Mode": "GOVERNANCE",
                        "RetainUntilDate": retained["ObjectLockRetainUntilDate"] - timedelta(hours=1),
                    },
                    BypassGovernanceRetention=True,
                )
    finally:
        attacker.close()

    reader = context_as(make_context, guarded_seaweed, bucket, models, "restore")
    repo = reader.repository("models")
    snapshot = repo.resolve("latest", "models")
    assert snapshot.id == second.snapshot.id  # type: ignore[union-attr]
    assert verify_snapshot(repo, snapshot, read_data=True).ok
    Restorer(repo).restore(snapshot, tmp_path / "out")
    assert (tmp_path / "out/path/model.safetensors").read_bytes() == (models / "model.safetensors").read_bytes()
    refused = run_backup(reader, "models")  # and read-only credentials cannot write anything
    assert refused.outcome == "failure" and "AccessDenied" in str(refused.error)
