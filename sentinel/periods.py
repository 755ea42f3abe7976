"""Reading points in time as people write them: ISO 8601, Unix seconds, or `24h` / `7d` ago."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, *, now: float | None = None) -> float:
    """Unix seconds for `2026-11-01`, `2026-11-01T08:00:00Z`, `1795891064`, or `36h` (ago).

    >>> parse_time("1970-01-02")
    86400.0
    """
    text = value.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return (now if now is not None else time.time()) - float(relative.group(1)) * _UNIT[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: use ISO 8601 (2026-11-01T08:00Z), Unix seconds, or 24h/7d ago"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
