"""CPU work that shares the proxy's event loop, in small slices.

Recording, audit sealing and the JSON-lines sink run on the proxy's event loop: a request that
arrives while they work waits for the current slice, so a slice is short (`SLICE_SECONDS`, about
one streamed exchange's recording). When a batch has already taken `PATIENCE_SECONDS`, the loop is
saturated and every yield waits a long turn; slices then grow to `CATCH_UP_SECONDS`, so the work
keeps up instead of falling behind until records are dropped. `Foreground` lets work that can
wait (recording) step aside while new requests are on their way to their first byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

SLICE_SECONDS = 0.00015
CATCH_UP_SECONDS = 0.005
PATIENCE_SECONDS = 0.01
FOREGROUND_PATIENCE_SECONDS = 0.002
"""The longest a slice waits for requests on their way to their first byte. Recording is never
starved: a recorder whose waits keep running out (a steady load is never quiet; a model server may
take longer than this to answer) stops waiting (`Recorder._step_aside`), and it never waits with a
backlog (catch-up slices)."""


class Slices:
    """Paces one batch of work: `if slices.due(): await slices.pause()` between items."""

    __slots__ = ("deadline", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.deadline = self.started + SLICE_SECONDS

    def due(self) -> bool:
        return time.perf_counter() >= self.deadline

    async def pause(self) -> None:
        """Let the loop handle I/O and other tasks, then go on."""
        await asyncio.sleep(0)
        now = time.perf_counter()
        self.deadline = now + (SLICE_SECONDS if now - self.started < PATIENCE_SECONDS else CATCH_UP_SECONDS)


async def map_in_slices(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`[fn(item) for item in items]` on the event loop, in slices."""
    slices = Slices()
    out: list[R] = []
    for item in items:
        out.append(fn(item))
        if slices.due():
            await slices.pause()
    return out


class Foreground:
    """Requests on their way to their first byte, which work that can wait lets go first.

    The proxy counts a request from its arrival until its response starts (or it ends); the
    recorder awaits `quiet()` before a slice and goes on when none is on its way, or after
    `patience` seconds, so it is never starved (and stops asking while its waits keep running out:
    `Recorder._step_aside`). When 64 streams end and 64 new requests arrive at once, the new
    requests are answered before the ended ones are recorded, instead of each waiting behind a
    recording slice (docs/benchmarks.md).

        foreground = Foreground()
        foreground.begin()        # a request arrived
        ...
        foreground.end()          # its response started: waiters go on once none is left
        await foreground.quiet()  # in the recorder, before a slice
    """

    __slots__ = ("_waiters", "starting")

    def __init__(self) -> None:
        self.starting = 0
        self._waiters: list[asyncio.Future[None]] = []

    def begin(self) -> None:
        self.starting += 1

    def end(self) -> None:
        self.starting -= 1
        if not self.starting and self._waiters:
            self.release()

    def release(self) -> None:
        """Let every waiter go on now, whoever is still on the way (the recorder is stopping)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def quiet(self, patience: float = FOREGROUND_PATIENCE_SECONDS) -> bool:
        """Return once no request is on its way to its first byte (True), or after `patience`
        seconds with some still on their way (False)."""
        if not self.starting:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(patience, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return not self.starting


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
