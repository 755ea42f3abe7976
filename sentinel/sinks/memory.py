"""`MemorySink`: keeps the most recent interactions in memory, for the demo and for tests."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from sentinel.interaction import Interaction


class MemorySink:
    def __init__(self, capacity: int = 10_000, name: str = "memory") -> None:
        self.name = name
        self.records: deque[Interaction] = deque(maxlen=capacity)
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        pass

    async def write(self, batch: Sequence[Interaction]) -> None:
        async with self._changed:
            self.records.extend(batch)
            self._changed.notify_all()

    async def stop(self) -> None:
        pass

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Interaction]:
        """Wait until at least `count` interactions arrived; return them all, oldest first."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.records) >= count)
        return list(self.records)
