"""Continuous verification: each check against a real trail in the real embedded store, tampered with
plain SQL; times from an injected clock, outcomes read back through the metrics collector."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import CollectorRegistry

from sentinel.audit.chain import checkpoint_digest
from sentinel.audit.pins import Pins, pin_file_text
from sentinel.audit.service import stored_public_keys
from sentinel.audit.store import StoreUnavailable
from sentinel.audit.verify import verify
from sentinel.audit.watch import CheckRunning, ContinuousVerification, StateFile
from sentinel.audit.watch_metrics import VerifyCollector
from sentinel.cli import main
from tests.audit.support import Trail, running_trail
from tests.support.forgery import forge

T0 = 1_800_000_000.0
HOUR = 3600.0


class Clock:
    """What the checks read as the time: set by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Watch:
    """A check runner over the trail's store, the state file, and the metrics a scrape would see."""

    def __init__(self, trail: Trail, path: Path, clock: Clock) -> None:
        self.trail = trail
        self.state = StateFile(path)
        self.clock = clock
        self.checks = ContinuousVerification(trail.store, self.state, page=1000, clock=clock)
        self.registry = CollectorRegistry()
        self.registry.register(VerifyCollector(self.state, {"incremental": HOUR, "full": 168 * HOUR}))

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def found(self, kind: str, check: str = "incremental") -> float | None:
        return self.metric("sentinel_audit_verify_findings", check=check, kind=kind)

    def head(self, instance: str = "node-a") -> tuple[int, str]:
        return self.state.load().heads[instance]


@pytest.fixture
async def trail(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with running_trail(tmp_path, checkpoint_every=5) as trail:
        await trail.write(10)
        await trail.ship()
        yield trail


@pytest.fixture
def watch(trail: Trail, tmp_path: Path) -> Watch:
    return Watch(trail, tmp_path / "data" / "audit" / "verify-state.json", Clock())


def rows(trail: Trail, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(trail.store.path)
    try:
        return db.execute(query, params).fetchall()
    finally:
        db.close()


async def more(trail: Trail, count: int, start: int) -> None:
    await trail.write(count, start=start)
    await trail.ship()


async def test_a_clean_trail_verifies_and_the_head_moves_on(trail: Trail, watch: Watch) -> None:
    run = await watch.checks.run_incremental()
    assert (run.outcome, run.records, run.started) == ("ok", 10, T0)
    assert watch.head() == (10, trail.body(10)["hash"])
    assert watch.metric("sentinel_audit_verify_ok", check="incremental") == 1
    assert watch.metric("sentinel_audit_verify_records_total", check="incremental") == 10
    assert watch.metric("sentinel_audit_verify_last_run_timestamp_seconds", check="incremental") == T0
    assert watch.metric("sentinel_audit_verify_last_success_timestamp_seconds", check="incremental") == T0
    assert watch.found("modified") == 0 and watch.found("bad_signature") == 0

    await more(trail, 7, start=11)
    watch.clock.now = T0 + HOUR
    run = await watch.checks.run_incremental()
    assert (run.outcome, run.records) == ("ok", 7)  # only what was written since
    assert watch.head() == (17, trail.body(17)["hash"])
    assert watch.metric("sentinel_audit_verify_records_total", check="incremental") == 17
    assert watch.metric("sentinel_audit_verify_last_success_timestamp_seconds", check="incremental") == T0 + HOUR
    assert watch.metric("sentinel_audit_verify_interval_seconds", check="incremental") == HOUR


async def test_a_record_modified_after_the_head_is_found_by_the_next_incremental_check(
    trail: Trail, watch: Watch
) -> None:
    await watch.checks.run_incremental()
    await more(trail, 10, start=11)
    doc = trail.body(15)
    doc["interaction"]["status_code"] = 500
    trail.replace(15, doc)

    run = await watch.checks.run_incremental()
    assert (run.outcome, run.findings, run.examples) == ("findings", {"modified": 1}, ["modified node-a:15"])
    assert watch.found("modified") == 1 and watch.found("deleted") == 0
    assert watch.metric("sentinel_audit_verify_ok", check="incremental") == 0
    assert watch.metric("sentinel_audit_verify_last_success_timestamp_seconds", check="incremental") == T0
    assert watch.head()[0] == 10  # held: the next check finds it again
    assert (await watch.checks.run_incremental()).findings == {"modified": 1}

    # The full check finds it too and moves the head on; what it found stays shown until the next one.
    assert (await watch.checks.run_full()).findings == {"modified": 1}
    assert watch.head()[0] == 20
    assert (await watch.checks.run_incremental()).outcome == "ok"
    assert watch.found("modified") == 0 and watch.found("modified", check="full") == 1


async def test_a_record_modified_before_the_head_is_found_only_by_the_full_check(trail: Trail, watch: Watch) -> None:
    await watch.checks.run_incremental()
    doc = trail.body(3)
    doc["interaction"]["model_requested"] = "rewritten"
    trail.replace(3, doc)
    await more(trail, 5, start=11)

    assert (await watch.checks.run_incremental()).outcome == "ok"
    run = await watch.checks.run_full()
    assert (run.outcome, run.records, run.examples) == ("findings", 15, ["modified node-a:3"])
    assert watch.found("modified", check="full") == 1
    assert watch.metric("sentinel_audit_verify_records_total", check="full") == 15


async def test_a_forged_checkpoint_signature_is_found_by_the_incremental_check(trail: Trail, watch: Watch) -> None:
    await watch.checks.run_incremental()
    (doc_id, body), *_ = rows(trail, "SELECT doc_id, body FROM checkpoints ORDER BY seq")
    forged = orjson.loads(body)
    forged["signature"] = base64.b64encode(b"x" * 64).decode()
    trail.sql("UPDATE checkpoints SET body = ? WHERE doc_id = ?", (orjson.dumps(forged).decode(), doc_id))

    run = await watch.checks.run_incremental()
    assert run.outcome == "findings" and run.records == 0
    assert watch.found("bad_signature") == 1
    assert watch.head()[0] == 10  # checkpoints are re-checked every time: no need to hold the head


async def test_a_chain_cut_below_its_verified_head_is_found(trail: Trail, watch: Watch) -> None:
    await watch.checks.run_incremental()
    trail.sql("DELETE FROM records WHERE seq > 7")
    run = await watch.checks.run_incremental()
    assert run.examples == ["truncated node-a:8..10"]
    assert watch.head()[0] == 10
    trail.sql("DELETE FROM records")
    assert (await watch.checks.run_incremental()).examples == ["deleted node-a:1..10"]


async def test_a_rewritten_and_re_signed_trail_with_a_replaced_key_is_found(trail: Trail, watch: Watch) -> None:
    """Record 3 changed, every later hash recomputed, every checkpoint re-signed with a new key that
    replaced the stored one: consistent in itself, so only what the earlier checks remembered shows it."""
    await watch.checks.run_incremental()
    previous = trail.body(2)["hash"]
    for seq in range(3, 11):
        doc = trail.body(seq)
        doc["prev_hash"] = previous
        if seq == 3:
            doc["interaction"]["model_requested"] = "rewritten"
        trail.replace(seq, doc, rehash=True)
        previous = doc["hash"]
    forger = Ed25519PrivateKey.generate()
    checkpoints = rows(trail, "SELECT doc_id, body FROM checkpoints ORDER BY seq")
    before = None
    for doc_id, body in checkpoints:
        checkpoint = orjson.loads(body)
        checkpoint["hash"] = trail.body(checkpoint["seq"])["hash"]
        checkpoint["prev_checkpoint"] = checkpoint_digest(before) if before is not None else None
        checkpoint.pop("signature")
        signed = orjson.dumps(checkpoint, option=orjson.OPT_SORT_KEYS)
        checkpoint["signature"] = base64.b64encode(forger.sign(signed)).decode()
        trail.sql("UPDATE checkpoints SET body = ? WHERE doc_id = ?", (orjson.dumps(checkpoint).decode(), doc_id))
        before = checkpoint
    kid = before["kid"] if before is not None else ""
    public = base64.b64encode(forger.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    for kek_id, body in rows(trail, "SELECT kek_id, body FROM keys WHERE kid = ?", (kid,)):
        key = orjson.loads(body) | {"public": public}
        trail.sql("UPDATE keys SET body = ? WHERE kid = ? AND kek_id = ?", (orjson.dumps(key).decode(), kid, kek_id))
    stored = await verify(trail.store, (await stored_public_keys(trail.store)).get)
    # The stored keys vouch for it, but this forger kept the old Merkle checkpoints: their roots show it.
    assert [(f.kind, f.seq) for f in stored.findings] == [("tree_mismatch", 6)]

    run = await watch.checks.run_full()
    assert run.findings["key_replaced"] == 1
    assert run.findings["bad_signature"] == len(checkpoints)
    assert "modified node-a:10" in run.examples  # the head verified before was rewritten
    assert watch.head()[1] != trail.body(10)["hash"]  # held at what was verified


async def test_with_pins_a_key_added_to_the_store_is_found_from_the_first_check(trail: Trail, tmp_path: Path) -> None:
    """Pinned, the checks trust the pins alone, not what the first check saw: a forger's signing key
    added before any check, with every checkpoint re-signed by it, is a finding at once."""
    pins_path = tmp_path / "pins.txt"
    pins_path.write_text(pin_file_text(await trail.store.keys()))
    kid = forge(trail.store.path, tmp_path / "keys" / "kek.key")
    pins = Pins.read([pins_path])
    unpinned = ContinuousVerification(trail.store, StateFile(tmp_path / "unpinned.json"), page=1000)
    assert (await unpinned.run_full()).outcome == "ok"  # trust on first use: the forgery passes
    pinned = ContinuousVerification(trail.store, StateFile(tmp_path / "pinned.json"), page=1000, pins=pins)
    run = await pinned.run_full()
    assert run.outcome == "findings"
    assert run.findings["unpinned_key"] == 1 and run.findings["unknown_key"] == 2
    assert kid in " ".join(run.examples)


async def test_the_state_survives_a_restart(trail: Trail, watch: Watch, tmp_path: Path) -> None:
    await watch.checks.run_incremental()
    await more(trail, 5, start=11)
    restarted = Watch(trail, watch.state.path, Clock(T0 + 2 * HOUR))
    assert restarted.metric("sentinel_audit_verify_last_success_timestamp_seconds", check="incremental") == T0
    run = await restarted.checks.run_incremental()
    assert (run.outcome, run.records) == ("ok", 5)
    assert restarted.head() == (15, trail.body(15)["hash"])
    assert restarted.metric("sentinel_audit_verify_records_total", check="incremental") == 15


async def test_a_check_that_cannot_run_is_recorded(trail: Trail, watch: Watch) -> None:
    await watch.checks.run_incremental()
    watch.clock.now = T0 + HOUR
    run = watch.checks.could_not_run("incremental", StoreUnavailable("audit store is unreachable"))
    assert (run.outcome, run.error) == ("error", "StoreUnavailable: audit store is unreachable")
    assert watch.metric("sentinel_audit_verify_ok", check="incremental") == 0
    assert watch.metric("sentinel_audit_verify_last_run_timestamp_seconds", check="incremental") == T0 + HOUR
    assert watch.metric("sentinel_audit_verify_last_success_timestamp_seconds", check="incremental") == T0
    assert watch.found("modified") == 0  # an error does not clear (or invent) findings


async def test_one_check_at_a_time(watch: Watch) -> None:
    with watch.state.lock(), pytest.raises(CheckRunning):
        await watch.checks.run_full()
    assert not watch.state.path.exists()


def test_before_any_check_the_schedule_start_counts_as_the_last_success(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "verify-state.json")
    registry = CollectorRegistry()
    registry.register(VerifyCollector(state, {"incremental": HOUR}))
    assert registry.get_sample_value("sentinel_audit_verify_interval_seconds", {"check": "incremental"}) == HOUR
    assert (
        registry.get_sample_value("sentinel_audit_verify_last_success_timestamp_seconds", {"check": "incremental"})
        is None
    )
    scheduled = state.load()
    scheduled.scheduled_since = T0
    state.save(scheduled)
    assert (
        registry.get_sample_value("sentinel_audit_verify_last_success_timestamp_seconds", {"check": "incremental"})
        == T0
    )
    assert registry.get_sample_value("sentinel_audit_verify_last_success_timestamp_seconds", {"check": "full"}) is None


def test_an_unreadable_state_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "verify-state.json"
    path.write_text("{not json")
    assert StateFile(path).load().heads == {}


def test_the_command_runs_a_check_and_says_what_it_found(tmp_path: Path) -> None:
    async def build() -> Path:
        async with running_trail(tmp_path, checkpoint_every=5) as trail:
            await trail.write(10)
            await trail.ship()
            return trail.store.path

    store = asyncio.run(build())
    config = tmp_path / "sentinel.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "audit": {"store_path": str(store)}}))
    runner = CliRunner()
    args = ["audit", "verify", "--scheduled", "incremental", "--config", str(config)]
    ok = runner.invoke(main, args)
    assert ok.exit_code == 0, ok.output
    assert "10 records verified; intact" in ok.output
    state = StateFile(tmp_path / "data" / "audit" / "verify-state.json").load()
    assert state.heads["node-a"][0] == 10

    db = sqlite3.connect(store)
    db.execute("DELETE FROM records WHERE seq = 10")
    db.commit()
    db.close()
    found = runner.invoke(main, args)
    assert found.exit_code == 1 and "verified; 1 problem(s): truncated node-a:10" in " ".join(found.output.split())
    assert runner.invoke(main, [*args, "--from", "1d"]).exit_code == 2
