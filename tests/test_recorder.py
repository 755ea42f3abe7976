"""The recorder shares the event loop: it lets new requests go first, yields every 0.15 ms of work,
and works longer slices when far behind."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from sentinel import recorder as recorder_module
from sentinel.cooperative import Foreground
from sentinel.proxy.exchange import Exchange
from sentinel.recorder import Recorder
from sentinel.telemetry.metrics import ModelLabels, ProxyMetrics


async def yields_while_recording(backlog: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(exchanges recorded, times other work ran meanwhile); each exchange 'takes' 0.1 ms on a fake clock."""
    clock = itertools.count()
    monkeypatch.setattr(recorder_module, "_perf", lambda: next(clock) * 0.0001)
    monkeypatch.setattr(recorder_module, "_DEFER_SECONDS", 0)
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
    await recorder.stop(grace=30)
    return recorded, turns_at_record[-1] - turns_at_record[0]


async def test_recording_yields_every_few_exchanges(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded, turns = await yields_while_recording(100, monkeypatch)
    assert recorded == 100 and turns == 49, turns  # 50 slices of 2 exchanges (2 clock readings) per 0.15 ms slice


async def test_a_long_backlog_is_recorded_in_longer_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded, turns = await yields_while_recording(2000, monkeypatch)
    # 5 ms slices (50 exchanges, 51 in two of them: float steps of the fake clock) until fewer than
    # 256 wait (35 slices), then 0.15 ms slices of 2 (124): 159 slices, a turn for other work between each.
    assert recorded == 2000 and turns == 158, turns


async def test_a_request_arriving_just_after_an_exchange_ends_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed-loop client's next request lands ~0.1 ms after the last response ended."""
    monkeypatch.setattr(recorder_module, "_perf", lambda: 0.0)  # a slice's clock stands still: no slice runs out
    registry = CollectorRegistry()
    recorder = Recorder(registry, ProxyMetrics(registry, ModelLabels([], 20)))
    order: list[str] = []
    recorded = asyncio.Event()

    def record(exchange: Exchange) -> None:
        order.append("recorded")
        recorded.set()

    monkeypatch.setattr(recorder, "record", record)
    await recorder.start()
    loop = asyncio.get_running_loop()
    recorder.submit(object())  # type: ignore[arg-type]
    # Both are loop timers: this one is due before the recorder's deferral (`_DEFER_SECONDS` from when it
    # takes the exchange, after this call), and the loop runs due timers in order of their deadlines.
    loop.call_later(recorder_module._DEFER_SECONDS / 5, order.append, "next request")
    await asyncio.wait_for(recorded.wait(), 30)
    assert order == ["next request", "recorded"]
    for _ in range(3):
        recorder.submit(object())  # type: ignore[arg-type]
    await asyncio.sleep(0)  # one turn of the loop: the recorder's, before this task's
    assert order.count("recorded") == 4  # a queue is not deferred: it is recorded straight away
    await recorder.stop(grace=30)


async def test_recording_waits_for_requests_on_their_way_to_their_first_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 streams end and 64 new requests arrive at once: the new ones are answered first."""
    monkeypatch.setattr(recorder_module, "_DEFER_SECONDS", 0)
    registry = CollectorRegistry()
    foreground = Foreground()
    recorder = Recorder(registry, ProxyMetrics(registry, ModelLabels([], 20)), foreground=foreground, patience=3600)
    recorded: list[object] = []
    all_recorded = asyncio.Event()

    def record(exchange: Exchange) -> None:
        recorded.append(exchange)
        if len(recorded) == 3:
            all_recorded.set()

    monkeypatch.setattr(recorder, "record", record)
    await recorder.start()
    foreground.begin()  # a request on its way to its first byte
    ended = [object() for _ in range(3)]
    for exchange in ended:
        recorder.submit(exchange)  # type: ignore[arg-type]
    for _ in range(1000):  # until the recorder has taken the first and waits (or, wrongly, recorded it)
        if foreground._waiters or recorded:
            break
        await asyncio.sleep(0)
    assert recorded == [] and foreground._waiters
    foreground.end()  # its response started
    await asyncio.wait_for(all_recorded.wait(), 30)
    assert recorded == ended
    assert recorder.gave_up == 0  # the wait paid: it ended when the request started
    await recorder.stop(grace=30)


async def test_requests_that_never_stop_coming_do_not_starve_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller holding a request on its way forever (an upstream that never answers it, while new
    ones keep arriving) gets a slice recorded every `patience`, and a backlog recorded straight away."""
    monkeypatch.setattr(recorder_module, "_DEFER_SECONDS", 0)
    registry = CollectorRegistry()
    foreground = Foreground()
    recorder = Recorder(registry, ProxyMetrics(registry, ModelLabels([], 20)), foreground=foreground, patience=0.001)
    recorded = 0
    done = asyncio.Event()

    def record(exchange: Exchange) -> None:
        nonlocal recorded
        recorded += 1
        if recorded == 600:
            done.set()

    monkeypatch.setattr(recorder, "record", record)
    foreground.begin()  # never ends
    for _ in range(600):  # more than the backlog bound, too
        recorder.submit(object())  # type: ignore[arg-type]
    await recorder.start()
    await asyncio.wait_for(done.wait(), 60)
    await recorder.stop(grace=30)
    assert recorded == 600 and foreground.starting == 1


class LoggedForeground(Foreground):
    """Notes the recorder's queue depth each time it steps aside."""

    def __init__(self) -> None:
        super().__init__()
        self.depth: Callable[[], int] = lambda: 0
        self.waited_at: list[int] = []

    async def quiet(self, patience: float = 0.002) -> None:
        self.waited_at.append(self.depth())
        await super().quiet(patience)


def held_recorder(monkeypatch: pytest.MonkeyPatch) -> tuple[Recorder, LoggedForeground, list[object]]:
    """A recorder behind a request that never starts and a patience no test waits out: it records only
    when it does not wait at all."""
    monkeypatch.setattr(recorder_module, "_DEFER_SECONDS", 0)
    registry = CollectorRegistry()
    foreground = LoggedForeground()
    recorder = Recorder(registry, ProxyMetrics(registry, ModelLabels([], 20)), foreground=foreground, patience=3600)
    foreground.depth = lambda: len(recorder.mailbox)
    recorded: list[object] = []
    monkeypatch.setattr(recorder, "record", recorded.append)
    foreground.begin()  # never ends
    return recorder, foreground, recorded


async def test_a_backlog_is_recorded_without_waiting_for_the_foreground(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 256 waiting exchanges recording must keep up: it does not step aside, however busy the
    foreground."""
    recorder, foreground, recorded = held_recorder(monkeypatch)
    waited_at = foreground.waited_at
    exchanges = [object() for _ in range(recorder_module._BACKLOG + 44)]
    for exchange in exchanges:
        recorder.submit(exchange)  # type: ignore[arg-type]
    await recorder.start()
    for _ in range(10_000):  # until all are recorded, or it waits
        if len(recorded) == len(exchanges) or waited_at:
            break
        await asyncio.sleep(0)
    assert waited_at == [] or max(waited_at) < recorder_module._BACKLOG, waited_at
    assert len(recorded) >= len(exchanges) - recorder_module._BACKLOG
    foreground.end()
    await recorder.stop(grace=30)
    assert recorded == exchanges


async def test_stopping_lets_a_waiting_recorder_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown while the recorder steps aside: what is queued is recorded within the grace, whatever
    the patience, and once closed it does not step aside again."""
    recorder, foreground, recorded = held_recorder(monkeypatch)
    waited_at = foreground.waited_at
    exchanges = [object() for _ in range(3)]
    for exchange in exchanges:
        recorder.submit(exchange)  # type: ignore[arg-type]
    await recorder.start()
    while not foreground._waiters:
        assert not recorded
        await asyncio.sleep(0)
    await asyncio.wait_for(recorder.stop(grace=30), 60)
    assert recorded == exchanges and waited_at == [2]
    assert foreground.starting == 1 and not foreground._waiters


async def test_recording_stops_stepping_aside_when_its_waits_keep_running_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model server that takes longer than the patience to answer (or a load that is never quiet):
    every wait would run out and only slow recording down. After a few, the recorder stops waiting,
    and tries again once every `_STEP_ASIDE_RETRY_SECONDS`."""
    now = 0.0
    monkeypatch.setattr(recorder_module, "_perf", lambda: now)  # slices never run out; the retry clock is ours
    monkeypatch.setattr(recorder_module, "_DEFER_SECONDS", 0)
    registry = CollectorRegistry()
    waits: list[bool] = []

    class Watched(Foreground):
        async def quiet(self, patience: float = 0.002) -> bool:
            went_quiet = await super().quiet(patience)
            waits.append(went_quiet)
            return went_quiet

    foreground = Watched()
    recorder = Recorder(registry, ProxyMetrics(registry, ModelLabels([], 20)), foreground=foreground, patience=0.001)
    recorded = asyncio.Queue[object]()
    monkeypatch.setattr(recorder, "record", recorded.put_nowait)
    await recorder.start()
    foreground.begin()  # on its way for the whole test

    async def record_one() -> None:  # one exchange, one slice
        exchange = object()
        recorder.submit(exchange)  # type: ignore[arg-type]
        assert await asyncio.wait_for(recorded.get(), 30) is exchange

    for _ in range(20):
        await record_one()
    assert waits == [False] * 6  # a moving share over about eight waits: past one half after six
    assert recorder.gave_up >= 0.5
    now += recorder_module._STEP_ASIDE_RETRY_SECONDS
    for _ in range(5):
        await record_one()
    assert waits == [False] * 7  # one try, which ran out too
    foreground.end()
    await recorder.stop(grace=30)
