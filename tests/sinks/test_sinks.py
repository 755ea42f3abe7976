"""The hook interface: slow and failing sinks never hold up requests; overflow and failures are counted."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import requests

from sentinel.interaction import Interaction
from sentinel.sinks.jsonl import JsonlSink, metadata_json, metadata_only
from tests.conftest import Running, wait_until
from tests.support.loop import BackgroundLoop
from tests.support.upstream import Script, ScriptedUpstream

WAIT = 30.0
"""Safety net for a step across threads and sockets; each takes milliseconds."""


class StuckSink:
    """A slow sink: its first `write` does not return until the test calls `release()`."""

    name = "slow"

    def __init__(self, servers: BackgroundLoop) -> None:
        self.servers = servers
        self.writing = threading.Event()  # set once the first `write` has begun
        self._released = asyncio.Event()  # used on the servers' loop only
        self.batches: list[list[str]] = []

    async def start(self) -> None: ...

    async def write(self, batch: Sequence[Interaction]) -> None:
        self.writing.set()
        await self._released.wait()
        self.batches.append([interaction.id for interaction in batch])

    def wait_until_writing(self) -> None:
        assert self.writing.wait(WAIT), "the sink was never given a batch"

    def release(self) -> None:
        self.servers.loop.call_soon_threadsafe(self._released.set)

    @property
    def seen(self) -> list[str]:
        return [record_id for batch in self.batches for record_id in batch]

    async def stop(self) -> None: ...


class FailingSink:
    name = "failing"

    async def start(self) -> None: ...

    async def write(self, batch: Sequence[Interaction]) -> None:
        raise RuntimeError("elasticsearch said no")

    async def stop(self) -> None: ...


def test_slow_and_failing_sinks_do_not_delay_requests(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], servers: BackgroundLoop
) -> None:
    upstream.script("/v1/models", Script(chunks=[b"{}"]))
    slow = StuckSink(servers)
    proxy = start_sentinel(upstream.url, sinks=[slow, FailingSink()], sinks_={})
    assert requests.get(proxy.url + "/v1/models", timeout=WAIT).status_code == 200
    slow.wait_until_writing()  # from here on the slow sink holds its first batch and does not return
    for _ in range(19):
        assert requests.get(proxy.url + "/v1/models", timeout=WAIT).status_code == 200
    # All 20 answered while the slow sink was stuck: requests do not wait on it, nor does the memory sink.
    records = proxy.records(20, timeout=WAIT)
    assert len(records) == 20 and slow.seen == []
    wait_until(lambda: proxy.metric("sentinel_sink_failures_total", sink="failing") == 20, timeout=WAIT)
    slow.release()
    wait_until(lambda: proxy.metric("sentinel_sink_written_total", sink="slow") == 20, timeout=WAIT)
    assert slow.seen == [record.id for record in records]  # once unstuck, it got everything, in order
    assert proxy.metric("sentinel_sink_dropped_total", sink="slow") == 0


def test_full_sink_queue_drops_and_counts(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], servers: BackgroundLoop
) -> None:
    upstream.script("/v1/models", Script(chunks=[b"{}"]))
    slow = StuckSink(servers)
    proxy = start_sentinel(upstream.url, sinks=[slow], sinks_={"queue_size": 5, "linger": 0})
    assert requests.get(proxy.url + "/v1/models", timeout=WAIT).status_code == 200
    slow.wait_until_writing()  # the first record is taken out of the queue and stuck in `write`
    for n in range(2, 13):
        assert requests.get(proxy.url + "/v1/models", timeout=WAIT).status_code == 200
        proxy.records(n, timeout=WAIT)  # recorded, so offered to the slow sink's queue too
    # 11 offered behind the stuck one: the first 5 fill the queue, the other 6 are dropped.
    assert proxy.metric("sentinel_sink_dropped_total", sink="slow") == 6
    assert proxy.metric("sentinel_sink_queue_depth", sink="slow") == 5
    assert proxy.metric("sentinel_sink_dropped_total", sink="memory") == 0
    slow.release()
    wait_until(lambda: proxy.metric("sentinel_sink_written_total", sink="slow") == 6, timeout=WAIT)
    ids = [record.id for record in proxy.records(12, timeout=WAIT)]
    assert slow.seen == ids[:6]  # the stuck one, then the five queued; the last six were dropped
    assert proxy.metric("sentinel_sink_dropped_total", sink="slow") == 6


def test_jsonl_sink_writes_metadata_without_content(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    upstream.script(
        "/v1/chat/completions", Script(chunks=[b'{"choices":[{"index":0,"message":{"content":"secret answer"}}]}'])
    )
    path = tmp_path / "interactions.jsonl"
    proxy = start_sentinel(upstream.url, sinks_={"jsonl_path": str(path)})
    requests.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "secret prompt"}], "user": "u-1"},
        timeout=WAIT,
    )
    proxy.records(1, timeout=WAIT)
    wait_until(lambda: path.exists() and path.read_bytes().endswith(b"\n"), timeout=WAIT)
    line = orjson.loads(path.read_bytes().splitlines()[0])
    assert line["model_requested"] == "m" and line["status_code"] == 200
    assert line["request_messages"] is None and line["response_text"] is None and line["caller"]["user"] is None
    assert b"secret" not in path.read_bytes()


async def test_jsonl_sink_with_content(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "x.jsonl", include_content=True)
    await sink.start()
    await sink.write([Interaction(id="1", started_at=0, method="POST", path="/", response_text="kept")])
    await sink.stop()
    assert orjson.loads((tmp_path / "x.jsonl").read_bytes())["response_text"] == "kept"


def test_metadata_lines_are_the_bytes_of_the_blanked_copy() -> None:
    from tests.audit.test_record import rich_interaction

    interaction = rich_interaction()
    assert metadata_json(interaction) == orjson.dumps(metadata_only(interaction))
    assert b"patient-7" not in metadata_json(interaction) and b"think" not in metadata_json(interaction)


async def test_a_large_batch_is_written_whole_and_in_order(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "x.jsonl")
    await sink.start()
    await sink.write([Interaction(id=str(n), started_at=0, method="POST", path="/") for n in range(2000)])
    await sink.stop()
    lines = (tmp_path / "x.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and [orjson.loads(line)["id"] for line in lines[:-1]] == [str(n) for n in range(2000)]


async def test_serialising_a_batch_yields_then_catches_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each clock reading 'takes' 0.1 ms: 0.15 ms slices for the first 10 ms of a batch, 5 ms slices after."""
    from sentinel import cooperative
    from sentinel.sinks import jsonl

    clock = itertools.count()
    # Only the clock `cooperative` reads: the `time` module itself stays as it is for everything else.
    monkeypatch.setattr(cooperative, "time", SimpleNamespace(perf_counter=lambda: next(clock) * 0.0001))
    sink = JsonlSink(tmp_path / "x.jsonl")
    await sink.start()
    turns = 0
    done = False

    async def other_work() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    before = turns
    serialise = jsonl.metadata_json
    turns_at: list[int] = []

    def counting(interaction: Interaction) -> bytes:
        turns_at.append(turns)
        return serialise(interaction)

    monkeypatch.setattr(jsonl, "metadata_json", counting)
    await sink.write([Interaction(id=str(n), started_at=0, method="POST", path="/") for n in range(500)])
    done = True
    await other
    await sink.stop()
    assert before <= turns_at[0]
    # 33 yields in the first 10 ms (2 records, 3 readings a slice), then 9 after slices of ~50 records each.
    assert turns_at[-1] - turns_at[0] == 42, turns_at[-1] - turns_at[0]
    assert len((tmp_path / "x.jsonl").read_bytes().splitlines()) == 500
