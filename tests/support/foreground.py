"""A proxy's `Foreground` that test threads can wait on, instead of polling its count."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sentinel.cooperative import Foreground

if TYPE_CHECKING:
    from tests.conftest import Running


class WatchedForeground(Foreground):
    """A `Foreground` that a test thread can wait on: every change of the count is notified."""

    __slots__ = ("changed",)

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def begin(self) -> None:
        with self.changed:
            super().begin()
            self.changed.notify_all()

    def end(self) -> None:
        with self.changed:
            super().end()
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Block until `predicate()` holds; from a thread other than the proxy's loop. `timeout` is
        only a safety net."""
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise AssertionError("the count never reached the expected state")


def watch_foreground(proxy: Running) -> WatchedForeground:
    """Give the running proxy and its recorder a `WatchedForeground` (while nothing is on its way)."""
    old = proxy.sentinel.proxy.foreground
    assert old is not None and proxy.sentinel.recorder.foreground is old
    assert old.starting == 0 and not old._waiters
    watched = WatchedForeground()
    proxy.sentinel.proxy.foreground = watched
    proxy.sentinel.recorder.foreground = watched
    return watched
