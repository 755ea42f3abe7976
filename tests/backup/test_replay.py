"""Two repositories that share one backup key (`backup.key_file` is per host, not per target): whoever
holds the buckets' credentials copies signed objects from one into the other. Each signed object is
bound to its repository id, so a copy counts for nothing — on real SeaweedFS buckets without Object
Lock, where the copies can also replace what was there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sentinel.backup import index
from sentinel.backup.jobs import BackupContext, run_backup
from sentinel.backup.repository import CONFIG_KEY, Repository
from sentinel.backup.restore import Restorer
from tests.backup.conftest import SMALL, MakeContext, write_model
from tests.support.seaweed import Seaweed


@pytest.fixture
def two(make_context: MakeContext, seaweed: Seaweed, tmp_path: Path) -> tuple[BackupContext, str, str]:
    """Plans `a` and `b`, each in its own bucket, one backup key; `b` has one index entry more than `a`."""
    buckets = {"a": seaweed.bucket(), "b": seaweed.bucket()}
    plans = {}
    for name in buckets:
        write_model(tmp_path / name, {"model.bin": 200_000}, seed=len(name) + ord(name))
        plans[name] = {"sources": [{"kind": "path", "path": str(tmp_path / name)}], "target": name}
    targets = {name: seaweed.target_settings(bucket) for name, bucket in buckets.items()}
    context = make_context(plans=plans, targets=targets, **SMALL)
    for name in ["a", "b", "b"]:
        assert run_backup(context, name).outcome == "success"
    return context, buckets["a"], buckets["b"]


def newest_entry(client: Any, bucket: str) -> tuple[int, bytes]:
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=index.PREFIX)["Contents"])
    return int(keys[-1].removeprefix(index.PREFIX)), client.get_object(Bucket=bucket, Key=keys[-1])["Body"].read()


def test_an_index_entry_copied_from_another_repository_counts_for_nothing(
    two: tuple[BackupContext, str, str], attacker: Any, tmp_path: Path
) -> None:
    context, a, b = two
    own = context.repository("a").snapshot_ids()
    highest, _ = newest_entry(attacker, a)
    sequence, foreign = newest_entry(attacker, b)
    assert sequence == highest + 1  # signed for that number: copied under it
    attacker.put_object(Bucket=a, Key=index.entry_key(sequence), Body=foreign)

    repo = context.repository("a")
    catalog = repo.catalog()
    assert catalog.intact, catalog.problems()  # b's snapshot is not "missing" from a
    assert [s.id for s in catalog.snapshots] == own
    assert any("another repository" in note for note in catalog.notes)
    Restorer(repo).restore(repo.resolve("latest"), tmp_path / "restored")
    assert run_backup(context, "a").outcome == "success"
    assert context.repository("a").catalog().intact


def test_a_config_copied_from_another_repository_is_refused_and_recover_config_ignores_its_entry(
    two: tuple[BackupContext, str, str], attacker: Any
) -> None:
    context, a, b = two
    own = context.repository("a")
    sequence, foreign_entry = newest_entry(attacker, b)
    foreign_config = attacker.get_object(Bucket=b, Key=CONFIG_KEY)["Body"].read()
    attacker.put_object(Bucket=a, Key=CONFIG_KEY, Body=foreign_config)  # no lock: it replaces a's

    refused = run_backup(context, "a")
    assert refused.outcome == "failure" and "does not authenticate" in str(refused.error)

    attacker.put_object(Bucket=a, Key=index.entry_key(sequence), Body=foreign_entry)
    recovered = Repository.recover_config(context.target("a"), context.key())
    assert recovered.id == own.id  # from a's own newest entry, not b's
    assert [s.id for s in recovered.catalog().snapshots] == own.snapshot_ids()


def test_entries_signed_before_the_repository_id_was_count_only_for_the_repository_they_name() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    entry = index.IndexEntry(3, {"s1": "models"}, {"s1": 1.0}, {"id": "a" * 32}, 2.0)
    body = index.encode(entry, key)[len(index.MAGIC) + index.SIGNATURE_BYTES :]
    legacy = index.MAGIC + key.sign(index._message_v1(3, body)) + body  # as written before this change
    assert index.decode(3, legacy, key.public_key(), "a" * 32).snapshots == {"s1": "models"}
    with pytest.raises(ValueError, match="another repository"):
        index.decode(3, legacy, key.public_key(), "b" * 32)
    with pytest.raises(ValueError, match="does not verify"):
        index.decode(4, legacy, key.public_key(), "a" * 32)
    current = index.encode(entry, key)
    forged = current[: len(index.MAGIC) + index.SIGNATURE_BYTES] + body.replace(b"a" * 32, b"b" * 32)
    with pytest.raises(ValueError, match="does not verify"):
        index.decode(3, forged, key.public_key(), "b" * 32)
