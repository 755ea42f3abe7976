"""Failed admin logins, counted per client in fixed windows: evidence without a denial of service.

Every failure is counted, but the audit trail gets one record per client per window (with the count,
the reasons and the paths tried) instead of one per attempt, and a client past `limit` unauthenticated
failures in its window gets 429 for every further wrong or missing token until the window ends (a
valid token still works). A record stays small whatever the attacker sends: paths are cut to
`MAX_PATH_CHARS` (at most `MAX_PATHS` per window), an IPv6 client is counted by its /64 (one host
holds a whole /64), and past `max_clients` windows the rest is counted under `other`. Windows run on
a monotonic clock (a wall-clock step neither ends nor stretches one); the record carries wall-clock
times. Both clocks are injectable: tests move time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sentinel.connections import client_group

log = logging.getLogger("sentinel.admin")

OTHER_CLIENTS = "other"
"""Where failures from clients past `max_clients` are counted, so memory stays bounded."""
MAX_PATHS = 10
MAX_PATH_CHARS = 200
"""Longer paths are cut (and marked with `…`): a 60 KB URL must not become a 60 KB record."""
THROTTLED = "throttled"


@dataclass
class FailureWindow:
    """One client's failed logins in one window."""

    client: str
    started: float
    """Monotonic time of the first failure: the window's arithmetic."""
    started_at: float = 0.0
    """Wall-clock time of the first failure."""
    last: float = 0.0
    last_at: float = 0.0
    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    paths: list[str] = field(default_factory=list)
    """The first `MAX_PATHS` distinct paths tried."""

    @property
    def refusable(self) -> int:
        """Failures that say the caller does not hold a token: those count towards the limit."""
        return self.reasons["missing"] + self.reasons["invalid"] + self.reasons[THROTTLED]

    def details(self, window: float) -> dict[str, object]:
        top = self.reasons.most_common(1)[0][0] if self.reasons else "invalid"
        return {
            "count": self.count,
            "reason": top,
            "reasons": dict(sorted(self.reasons.items())),
            "path": self.paths[0] if self.paths else "",
            "paths": list(self.paths),
            "first_at": self.started_at,
            "last_at": self.last_at,
            "window_seconds": window,
        }


def shorten(path: str) -> str:
    """`path`, cut to `MAX_PATH_CHARS` characters (the cut marked with `…`)."""
    return path if len(path) <= MAX_PATH_CHARS else path[: MAX_PATH_CHARS - 1] + "…"


class FailedLogins:
    """Counts failures per client; hands out the windows that have ended.

    >>> logins = FailedLogins(window=60, limit=10)
    >>> logins.failed("invalid", "/audit/records", "10.0.0.7")
    >>> logins.retry_after("10.0.0.7") is None
    True
    """

    def __init__(
        self,
        *,
        window: float = 60.0,
        limit: int = 10,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.limit = limit
        self.max_clients = max_clients
        self.clock = clock
        self.wall = wall
        self._open: dict[str, FailureWindow] = {}

    def _key(self, client: str | None) -> str:
        key = client_group(client) if client else "unknown"
        if key not in self._open and len(self._open) >= self.max_clients - 1:  # one slot kept for "other"
            return OTHER_CLIENTS
        return key

    def retry_after(self, client: str | None) -> float | None:
        """Seconds until this client may try again, or None when it may try now."""
        current = self._open.get(self._key(client))
        if current is None or current.refusable < self.limit:
            return None
        left = current.started + self.window - self.clock()
        return left if left > 0 else None

    def failed(self, reason: str, path: str, client: str | None) -> bool:
        """Count one failure; True when it opened the client's window (worth a log line)."""
        now, wall = self.clock(), self.wall()
        key = self._key(client)
        current = self._open.get(key)
        opened = current is None or now >= current.started + self.window
        if opened:
            if current is not None:  # its window ended but was not handed out yet: keep it for `ended`
                self._open[key + "\x00" + str(current.started)] = current
            current = self._open[key] = FailureWindow(key, now, started_at=wall)
        assert current is not None
        current.count += 1
        current.last, current.last_at = now, wall
        current.reasons[reason] += 1
        path = shorten(path)
        if len(current.paths) < MAX_PATHS and path not in current.paths:
            current.paths.append(path)
        return opened

    def ended(self, *, everything: bool = False) -> list[FailureWindow]:
        """Remove and return the windows that have ended (all of them with `everything`, at shutdown)."""
        now = self.clock()
        done = [k for k, w in self._open.items() if everything or now >= w.started + self.window]
        return [self._open.pop(k) for k in done]

    async def run(self, record: Callable[[FailureWindow], Awaitable[None]], tick: float = 1.0) -> None:
        """Record each window once it has ended, every `tick` seconds, until cancelled; then the rest."""
        try:
            while True:
                await asyncio.sleep(tick)
                await self._record(self.ended(), record)
        finally:
            await self._record(self.ended(everything=True), record)

    async def _record(self, windows: list[FailureWindow], record: Callable[[FailureWindow], Awaitable[None]]) -> None:
        for window in windows:
            log.warning(
                "admin API: %d failed login(s) from %s in %.0f s (%s)",
                window.count,
                window.client,
                window.last - window.started,
                ", ".join(f"{r} {n}" for r, n in sorted(window.reasons.items())),
            )
            try:
                await record(window)
            except Exception as exc:  # the count stays in the log line above
                log.error("could not record failed admin logins from %s: %s", window.client, exc)
