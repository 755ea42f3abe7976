"""CPU work that shares the proxy's event loop, in small slices.

Recording, audit sealing and the JSON-lines sink run on the proxy's event loop: a request that
arrives while they work waits for the current slice, so a slice is short (`SLICE_SECONDS`, about
one streamed exchange's recording). When a batch has already taken `PATIENCE_SECONDS`, the loop is
saturated and every yield waits a long turn; slices then grow to `CATCH_UP_SECONDS`, so the work
keeps up instead of falling behind until records are dropped.
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
