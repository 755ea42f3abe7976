"""The recorder shares the event loop: it yields every 0.3 ms of work, and works longer slices when far behind."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from prometheus_client import CollectorRegistry

from sentinel import recorder as recorder_module
from sentinel.proxy.exchange import Exchange
from sentinel.recorder import Recorder
from sentinel.telemetry.metrics import ModelLabels, ProxyMetrics


async def yields_while_recording(backlog: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(exchanges recorded, times other work ran meanwhile); each exchange 'takes' 0.1 ms on a fake clock."""
    clock = itertools.count()
    monkeypatch.setattr(recorder_module, "_perf", lambda: next(clock) * 0.0001)
    registry = CollectorRegistry()
    recorder = Recorder(registry, ProxyMetrics(registry, ModelLabels([], 20)), capacity=10_000)
    recorded = 0
    turns_at_record: list[int] = []
    turns = 0

    def record(exchange: Exchange) -> None:
        nonlocal recorded
        recorded += 1
        turns_at_record.append(turns)

    monkeypatch.setattr(recorder, "record", record)
    for _ in range(backlog):
        recorder.mailbox.offer(object())  # type: ignore[arg-type]
    await recorder.start()
    while recorded < backlog:
        turns += 1
        await asyncio.sleep(0)
    await recorder.stop(grace=1)
    return recorded, turns_at_record[-1] - turns_at_record[0]


async def test_recording_yields_every_few_exchanges(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded, turns = await yields_while_recording(100, monkeypatch)
    assert recorded == 100 and 30 <= turns <= 36, turns  # 3 exchanges (3 clock readings) per 0.3 ms slice


async def test_a_long_backlog_is_recorded_in_longer_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded, turns = await yields_while_recording(2000, monkeypatch)
    # 5 ms slices (~50 exchanges) until fewer than 256 wait (~35 slices), then 0.3 ms slices (~85).
    assert recorded == 2000 and 100 <= turns <= 135, turns
