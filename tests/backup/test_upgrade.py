"""A repository written before configs were signed and the snapshot index existed (unsigned `config`,
no `index/`), on a real SeaweedFS bucket without Object Lock, as such repositories were.

Whoever holds the bucket's credentials could write an unsigned config of their own. It must count
only if the repository's own signed manifests vouch for its id; the first backup after the upgrade
signs the genuine one and starts the index with every old snapshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from sentinel.backup.jobs import BackupContext, run_backup
from sentinel.backup.repository import CONFIG_KEY, Repository
from sentinel.backup.restore import Restorer
from sentinel.backup.targets.s3 import S3Target
from tests.backup.conftest import SMALL, MakeContext, write_model
from tests.support.seaweed import Seaweed

MODEL = {"model.safetensors": 300_000}


def pre_upgrade(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, tmp_path: Path
) -> tuple[BackupContext, str]:
    """A repository with two snapshots, then made to look as before the upgrade."""
    models = tmp_path / "models"
    write_model(models, MODEL, seed=1)
    bucket = seaweed.bucket()
    plans = {"models": {"sources": [{"kind": "path", "path": str(models)}]}}
    context = make_context(plans=plans, targets={"default": seaweed.target_settings(bucket)}, **SMALL)
    assert run_backup(context, "models").outcome == "success"
    write_model(models, MODEL, seed=2)
    assert run_backup(context, "models").outcome == "success"
    config = orjson.loads(attacker.get_object(Bucket=bucket, Key=CONFIG_KEY)["Body"].read())
    del config["signature"]
    attacker.put_object(Bucket=bucket, Key=CONFIG_KEY, Body=orjson.dumps(config))
    for item in attacker.list_objects_v2(Bucket=bucket, Prefix="index/")["Contents"]:
        attacker.delete_object(Bucket=bucket, Key=item["Key"])
    context.path(context.backup.state_file).unlink()  # and a host that never saw an index
    return context, bucket


def test_the_first_backup_after_the_upgrade_signs_the_config_and_indexes_every_old_snapshot(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, tmp_path: Path
) -> None:
    context, bucket = pre_upgrade(make_context, seaweed, attacker, tmp_path)
    before = context.repository("models").snapshot_ids()
    third = run_backup(context, "models")
    assert third.outcome == "success", third.error
    config = orjson.loads(attacker.get_object(Bucket=bucket, Key=CONFIG_KEY)["Body"].read())
    assert config.get("signature")  # written again, signed
    repo = context.repository("models")
    assert repo.config.get("signature")
    reading = repo.read_index()
    assert reading.newest is not None and set(reading.newest.snapshots) == {*before, third.snapshot.id}  # type: ignore[union-attr]
    catalog = repo.catalog()
    assert catalog.intact and len(catalog.snapshots) == 3


def test_an_unsigned_config_with_another_id_is_refused_before_the_index_exists(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, tmp_path: Path
) -> None:
    context, bucket = pre_upgrade(make_context, seaweed, attacker, tmp_path)
    genuine = orjson.loads(attacker.get_object(Bucket=bucket, Key=CONFIG_KEY)["Body"].read())
    forged = {**genuine, "id": "0" * 32}  # same public key: only the id changes
    attacker.put_object(Bucket=bucket, Key=CONFIG_KEY, Body=orjson.dumps(forged))

    refused = run_backup(context, "models")
    assert refused.outcome == "failure", "a backup ran under the forged repository id"
    assert "does not authenticate" in str(refused.error)
    assert not attacker.list_objects_v2(Bucket=bucket, Prefix="index/").get("Contents")  # no index built

    # Put back, everything is as before: both old snapshots restore.
    attacker.put_object(Bucket=bucket, Key=CONFIG_KEY, Body=orjson.dumps(genuine))
    repo = context.repository("models")
    assert len(repo.catalog().snapshots) == 2
    Restorer(repo).restore(repo.resolve("latest"), tmp_path / "restored")
    assert (tmp_path / "restored" / "path" / "model.safetensors").read_bytes() == (
        tmp_path / "models" / "model.safetensors"
    ).read_bytes()


def test_an_unsigned_config_is_accepted_on_an_empty_repository(
    make_context: MakeContext, seaweed: Seaweed, attacker: Any, tmp_path: Path
) -> None:
    context, bucket = pre_upgrade(make_context, seaweed, attacker, tmp_path)
    config = orjson.loads(attacker.get_object(Bucket=bucket, Key=CONFIG_KEY)["Body"].read())
    other = seaweed.bucket()
    attacker.put_object(Bucket=other, Key=CONFIG_KEY, Body=orjson.dumps(config))
    target = S3Target.from_settings(context.backup.targets["default"].model_copy(update={"bucket": other}))
    assert Repository.open(target, context.key()).id == config["id"]
