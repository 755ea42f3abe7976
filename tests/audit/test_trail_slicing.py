"""The audit trail's group commit: sealing shares the event loop, and catches up when it falls behind."""

from __future__ import annotations

import asyncio
import itertools
import time
import types
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from sentinel import cooperative
from sentinel.audit import record as records
from sentinel.audit import trail as trail_module
from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import KeyRing
from sentinel.audit.spool import Spool
from sentinel.audit.trail import AuditMetrics, AuditTrail, Entry
from tests.audit.test_record import rich_interaction


async def started_trail(tmp_path: Path) -> tuple[AuditTrail, Spool]:
    spool = Spool(tmp_path / "spool.db", synchronous="OFF")
    await spool.run(spool.open)
    trail = AuditTrail(spool, "n1", AuditMetrics(CollectorRegistry()))
    await trail.start(KeyRing(LocalKeyFile.create(tmp_path / "kek.key"), spool))
    return trail, spool


async def test_a_large_batch_is_sealed_in_slices_then_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each clock reading 'takes' 0.1 ms on a fake clock: 0.15 ms slices for the first 10 ms, 5 ms slices after."""
    clock = itertools.count()
    # Only the trail and its slicer read the fake clock (not other threads of this process).
    fake_time = types.SimpleNamespace(perf_counter=lambda: next(clock) * 0.0001, time=time.time)
    monkeypatch.setattr(trail_module, "time", fake_time)
    monkeypatch.setattr(cooperative, "time", fake_time)
    trail, spool = await started_trail(tmp_path)
    turns = 0
    done = False

    async def other_work() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    seal = records.seal_encoded
    turns_at_seal: list[int] = []

    def counting_seal(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], bytes]:
        turns_at_seal.append(turns)
        return seal(*args, **kwargs)

    monkeypatch.setattr(records, "seal_encoded", counting_seal)
    other = asyncio.create_task(other_work())
    interaction = rich_interaction()
    await trail.append([Entry(records.INTERACTION, interaction=interaction) for _ in range(500)])
    done = True
    await other
    # Other work ran between slices: 33 times in the first 10 ms of sealing (2 records and 3 clock
    # readings a slice), 9 times in the remaining ~43 ms (about 50 records a slice). The clock is
    # the fake one and the loop runs nothing else, so the count is exact.
    assert turns_at_seal[-1] - turns_at_seal[0] == 42, turns_at_seal[-1] - turns_at_seal[0]
    assert trail.head.seq == 500
    bodies = await spool.run(lambda: [b for (b,) in spool.db.execute("SELECT body FROM records ORDER BY seq")])
    previous = records.GENESIS
    for seq, body in enumerate(bodies, start=1):
        doc: dict[str, Any] = orjson.loads(body)
        claimed, actual = records.stored_hashes(body)
        assert doc["seq"] == seq and doc["prev_hash"] == previous and claimed == actual
        previous = claimed
    await trail.stop()
    spool.close()
