"""Retention, prune and leases: never delete what a kept snapshot needs; Object Lock refusals reported."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from sentinel.backup.jobs import run_backup, run_prune
from sentinel.backup.lease import Lease, LeaseHeld, live_leases
from sentinel.backup.repository import chunk_key
from sentinel.backup.retention import RetentionPolicy
from sentinel.backup.settings import TargetSettings
from sentinel.backup.snapshot import Snapshot
from sentinel.backup.targets import Target
from sentinel.backup.targets.local import LocalTarget
from sentinel.backup.targets.s3 import S3Target
from sentinel.backup.verify import verify_snapshot
from tests.backup.conftest import SMALL, FakeClock, MakeContext, write_model
from tests.support.seaweed import Seaweed

ONLY_LAST = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}


def snap(day: str, hour: int = 2) -> Snapshot:
    t = datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00").timestamp()
    return Snapshot(id=f"{day}-{hour}", plan="p", started=t, finished=t)


def test_retention_keeps_newest_per_day_week_and_month() -> None:
    snaps = [snap(f"2025-01-{d:02d}", h) for d in range(1, 32) for h in (2, 14)] + [snap("2024-12-15")]
    keep, forget = RetentionPolicy(keep_last=1, keep_daily=3, keep_weekly=2, keep_monthly=2).apply(snaps)
    # newest; the newest of the last 3 days; of the last 2 ISO weeks (Jan 31 is in week 5, Jan 26 ends week 4);
    # of the last 2 months (January's is already kept, December's is the 15th)
    assert [s.id for s in keep] == ["2025-01-31-14", "2025-01-30-14", "2025-01-29-14", "2025-01-26-14", "2024-12-15-2"]
    assert len(forget) == len(snaps) - len(keep)
    last_two = RetentionPolicy(keep_last=2, keep_daily=0, keep_weekly=0, keep_monthly=0).apply(snaps)[0]
    assert [s.id for s in last_two] == ["2025-01-31-14", "2025-01-31-2"]


def test_prune_deletes_only_unreferenced_chunks(make_context: MakeContext, tmp_path: Path) -> None:
    models = tmp_path / "models"
    plans = {
        "models": {"sources": [{"kind": "path", "path": str(models)}], "retention": ONLY_LAST},
        "other": {"sources": [{"kind": "path", "path": str(tmp_path / "other")}]},
    }
    write_model(tmp_path / "other", {"x.bin": 200_000})
    write_model(models, {"shared.bin": 400_000, "old.bin": 300_000})
    context = make_context(plans=plans, **SMALL)
    assert run_backup(context, "other").outcome == "success"
    first = run_backup(context, "models")
    (models / "old.bin").unlink()
    write_model(models, {"new.bin": 300_000})
    second = run_backup(context, "models")
    assert first.snapshot and second.snapshot
    repo = context.repository("models")
    only_old = first.snapshot.chunk_ids() - second.snapshot.chunk_ids()
    assert only_old and second.snapshot.chunk_ids() & first.snapshot.chunk_ids()  # shared.bin is shared
    before = set(repo.chunk_sizes())

    dry = run_prune(context, "models", dry_run=True)["default"]
    assert dry.forgotten == [first.snapshot.id] and dry.chunks_deleted == len(only_old)
    assert set(repo.chunk_sizes()) == before  # a dry run deletes nothing

    report = run_prune(context, "models")["default"]
    assert report.forgotten == [first.snapshot.id] and not report.errors and not report.locked
    assert report.chunks_deleted == len(only_old)
    assert set(repo.chunk_sizes()) == before - only_old
    assert {s.plan for s in repo.snapshots()} == {"models", "other"}  # the other plan's snapshot is untouched
    for s in repo.snapshots():
        assert verify_snapshot(repo, s, read_data=True).ok


def test_prune_and_backup_exclude_each_other(make_context: MakeContext, tmp_path: Path) -> None:
    write_model(tmp_path / "m", {"a.bin": 100_000})
    context = make_context(plans={"m": {"sources": [{"kind": "path", "path": str(tmp_path / "m")}]}}, **SMALL)
    assert run_backup(context, "m").outcome == "success"
    target = context.target("m")
    with Lease(target, "backup-m", ttl=30):
        with pytest.raises(LeaseHeld, match="a backup is running"):
            run_prune(context, "m")
        # A second instance starting the same plan is skipped, not failed.
        assert run_backup(context, "m").outcome == "skipped"
    with Lease(target, "prune", ttl=30):
        outcome = run_backup(context, "m", prune_wait=0.5)
        assert outcome.outcome == "failure" and "a prune is running" in str(outcome.error)
    assert live_leases(target) == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_crashed_holders_lease_expires_and_can_be_taken_over(where: str, seaweed: Seaweed, tmp_path: Path) -> None:
    target: Target
    if where == "local":
        target = LocalTarget(tmp_path / "repo")
    else:
        target = S3Target.from_settings(TargetSettings(**seaweed.target_settings(seaweed.bucket(versioned=True))))
    clock = FakeClock()  # expiry is judged by this clock: the lease runs out when the test says so
    crashed = Lease(target, "backup-x", ttl=5, clock=clock)
    crashed.acquire()
    crashed._stop.set()  # the process died: no more renewals, no release
    with pytest.raises(LeaseHeld, match=r"held by .* \(expires in 5s\)"):
        Lease(target, "backup-x", ttl=5, clock=clock).acquire()
    clock.advance(4.9)
    with pytest.raises(LeaseHeld, match="held by"):  # not yet
        Lease(target, "backup-x", ttl=5, clock=clock).acquire()
    assert [lease.name for lease in live_leases(target, now=clock())] == ["backup-x"]
    clock.advance(0.3)  # 5.2 s after the crashed holder's last write: expired
    assert live_leases(target, now=clock()) == []
    survivor = Lease(target, "backup-x", ttl=5, clock=clock)
    survivor.acquire()
    crashed.renew()  # the stalled holder wakes up: it cannot renew over the new holder
    with pytest.raises(LeaseHeld, match="taken over"):
        crashed.check()
    survivor.release()
    assert live_leases(target, now=clock()) == []


def test_object_lock_refuses_prune_deletes_which_are_reported_and_safe(
    make_context: MakeContext, seaweed: Seaweed, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bucket = seaweed.bucket(lock=True)
    models = tmp_path / "models"
    target = seaweed.target_settings(bucket, object_lock_mode="GOVERNANCE", object_lock_days=1)
    context = make_context(
        plans={"models": {"sources": [{"kind": "path", "path": str(models)}], "retention": ONLY_LAST}},
        targets={"default": target},
        **SMALL,
    )
    for seed in (1, 2, 3):
        write_model(models, {"w.bin": 200_000}, seed=seed)
        assert run_backup(context, "models").outcome == "success"
    client = seaweed.client()
    request.addfinalizer(client.close)
    some_chunk = next(iter(context.repository("models").chunk_sizes()))
    retention = client.get_object_retention(Bucket=bucket, Key=chunk_key(some_chunk))["Retention"]
    assert retention["Mode"] == "GOVERNANCE" and retention["RetainUntilDate"] > datetime.now(UTC)

    report = run_prune(context, "models")["default"]
    assert report.forgotten == [] and not report.errors
    locked = [key for key, _ in report.locked]
    assert len([k for k in locked if k.startswith("snapshots/")]) == 2  # both old snapshots: refused, reported
    assert all(until is not None and until > datetime.now(UTC) for _, until in report.locked)
    repo = context.repository("models")
    snaps = repo.snapshots()
    assert len(snaps) == 3  # still complete and listed: a refused delete leaves the object intact
    for s in snaps:
        assert verify_snapshot(repo, s, read_data=True).ok
    # No snapshot or chunk was merely hidden behind a delete marker (released leases are, by design).
    markers = client.list_object_versions(Bucket=bucket).get("DeleteMarkers", [])
    assert [m["Key"] for m in markers if not m["Key"].startswith("locks/")] == []


def test_prune_forgets_nothing_while_the_newest_snapshot_is_missing(make_context: MakeContext, tmp_path: Path) -> None:
    """Someone without the key deletes the newest snapshot (nothing locks a local target): while the
    repository is known to be damaged, retention forgets nothing (the operator may need every older
    snapshot to recover), and no chunk is deleted."""
    models = tmp_path / "models"
    plans = {"models": {"sources": [{"kind": "path", "path": str(models)}], "retention": ONLY_LAST}}
    context = make_context(plans=plans, **SMALL)
    taken = []
    for seed in (1, 2, 3):
        write_model(models, {"a.bin": 100_000}, seed=seed)
        snapshot = run_backup(context, "models").snapshot
        assert snapshot is not None
        taken.append(snapshot)
    context.repository("models").delete_snapshot(taken[-1].id)

    report = run_prune(context)["default"]
    assert report.errors and taken[-1].id in report.errors[0]
    assert not report.forgotten and report.chunks_deleted == 0
    repo = context.repository("models")
    assert [s.id for s in repo.catalog().snapshots] == [taken[0].id, taken[1].id]
    assert all(verify_snapshot(repo, s, read_data=True).ok for s in taken[:2])
