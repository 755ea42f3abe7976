"""The hook interface: slow and failing sinks never hold up requests; overflow and failures are counted."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pytest
import requests

from sentinel.interaction import Interaction
from sentinel.sinks.jsonl import JsonlSink, metadata_json, metadata_only
from tests.conftest import Running, wait_until
from tests.support.upstream import Script, ScriptedUpstream


class SlowSink:
    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.seen = 0

    async def start(self) -> None: ...

    async def write(self, batch: Sequence[Interaction]) -> None:
        await asyncio.sleep(self.seconds)
        self.seen += len(batch)

    async def stop(self) -> None: ...


class FailingSink:
    name = "failing"

    async def start(self) -> None: ...

    async def write(self, batch: Sequence[Interaction]) -> None:
        raise RuntimeError("elasticsearch said no")

    async def stop(self) -> None: ...


def test_slow_and_failing_sinks_do_not_delay_requests(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]
) -> None:
    upstream.script("/v1/models", Script(chunks=[b"{}"]))
    slow = SlowSink(5.0)
    proxy = start_sentinel(upstream.url, sinks=[slow, FailingSink()], sinks_={})
    started = time.monotonic()
    for _ in range(20):
        assert requests.get(proxy.url + "/v1/models", timeout=5).status_code == 200
    assert time.monotonic() - started < 2.0  # 20 calls while the slow sink sleeps 5 s on its first batch
    proxy.records(20)  # the memory sink got everything meanwhile
    wait_until(lambda: (proxy.metric("sentinel_sink_failures_total", sink="failing") or 0) == 20)


def test_full_sink_queue_drops_and_counts(upstream: ScriptedUpstream, start_sentinel: Callable[..., Running]) -> None:
    upstream.script("/v1/models", Script(chunks=[b"{}"]))
    proxy = start_sentinel(upstream.url, sinks=[SlowSink(30.0)], sinks_={"queue_size": 5})
    for _ in range(12):
        assert requests.get(proxy.url + "/v1/models", timeout=5).status_code == 200
    wait_until(lambda: (proxy.metric("sentinel_sink_dropped_total", sink="slow") or 0) >= 6)


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
        timeout=5,
    )
    proxy.record()
    wait_until(lambda: path.exists() and path.read_bytes().endswith(b"\n"))
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
    monkeypatch.setattr(cooperative.time, "perf_counter", lambda: next(clock) * 0.0001)
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
    # ~33 yields in the first 10 ms (2 records, 3 readings a slice), then ~9 of ~50 records each.
    assert 38 <= turns_at[-1] - turns_at[0] <= 46, turns_at[-1] - turns_at[0]
    assert len((tmp_path / "x.jsonl").read_bytes().splitlines()) == 500
