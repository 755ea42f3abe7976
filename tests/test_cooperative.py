"""`Foreground`: work that can wait steps aside while requests are on their way to their first byte,
but never longer than its patience."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sentinel.cooperative import Foreground

HOUR = 3600.0  # a patience no test waits out: only `end()` can let the waiter go


async def parked(foreground: Foreground, task: asyncio.Task[None]) -> None:
    """Until `task` waits in `foreground.quiet()` (a state, not a time)."""
    while not foreground._waiters:
        assert not task.done()
        await asyncio.sleep(0)


async def test_quiet_returns_at_once_when_no_request_is_starting() -> None:
    foreground = Foreground()
    await asyncio.wait_for(foreground.quiet(HOUR), 30)
    foreground.begin()
    foreground.end()
    await asyncio.wait_for(foreground.quiet(HOUR), 30)
    assert foreground.starting == 0 and not foreground._waiters


async def test_quiet_waits_until_the_last_starting_request_has_started() -> None:
    foreground = Foreground()
    foreground.begin()
    foreground.begin()
    waiting = asyncio.create_task(foreground.quiet(HOUR))
    await parked(foreground, waiting)
    foreground.end()  # one of the two has started: the other is still on its way
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done() and foreground.starting == 1
    foreground.end()
    await asyncio.wait_for(waiting, 30)
    assert not foreground._waiters


async def test_quiet_goes_on_after_its_patience_when_requests_keep_coming() -> None:
    """A steady load is never quiet: the waiter must not starve."""
    foreground = Foreground()
    foreground.begin()
    await asyncio.wait_for(foreground.quiet(0.001), 30)
    assert foreground.starting == 1 and not foreground._waiters


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    foreground = Foreground()
    foreground.begin()
    waiting = asyncio.create_task(foreground.quiet(HOUR))
    await parked(foreground, waiting)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled() and not foreground._waiters
    foreground.end()  # nothing left to wake, and no error
    assert foreground.starting == 0


async def test_a_waiter_cancels_its_timer_however_it_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Released by `end()` or cancelled: no patience timer is left on the loop."""
    loop = asyncio.get_running_loop()
    timers: list[asyncio.TimerHandle] = []
    call_later = loop.call_later

    def noted(delay: float, callback: Callable[..., object], *args: object) -> asyncio.TimerHandle:
        timers.append(call_later(delay, callback, *args))
        return timers[-1]

    monkeypatch.setattr(loop, "call_later", noted)
    foreground = Foreground()
    foreground.begin()
    released = asyncio.create_task(foreground.quiet(HOUR))
    await parked(foreground, released)
    foreground.end()
    await released  # already let go: no `wait_for`, whose own timer would be noted too
    foreground.begin()
    cancelled = asyncio.create_task(foreground.quiet(HOUR))
    await parked(foreground, cancelled)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert len(timers) == 2 and all(timer.cancelled() for timer in timers)
    assert not foreground._waiters


async def test_release_lets_waiters_go_on_while_requests_are_still_starting() -> None:
    """For shutdown: the count is left alone, the next `end()` has nothing to wake."""
    foreground = Foreground()
    foreground.begin()
    waiting = asyncio.create_task(foreground.quiet(HOUR))
    await parked(foreground, waiting)
    foreground.release()
    await asyncio.wait_for(waiting, 30)
    assert foreground.starting == 1 and not foreground._waiters
    foreground.end()
    assert foreground.starting == 0
