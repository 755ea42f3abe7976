"""`Background`: a task that works off the spool in the background (the shipper, the anchor publisher):
started, nudged when there is new work, asleep otherwise, and given a moment to finish at stop."""

from __future__ import annotations

import asyncio
import contextlib


class Background:
    name = "audit-background"

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def nudge(self) -> None:
        """New work: do it now rather than at the next idle tick."""
        self._wake.set()

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Let the task finish what it can for a moment; what remains stays safe in the spool."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _sleep(self, seconds: float) -> None:
        """Until nudged, or `seconds`."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
