"""Cron schedules (five-field crontab, as APScheduler 3 reads it): checking one, and how far apart its runs fall."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

_FROM = datetime(2024, 1, 1, tzinfo=UTC)
_HORIZON = timedelta(days=4 * 366)  # a leap day's schedule fires within it
_FIRES = 1000


def check_cron(value: str) -> str:
    """A five-field crontab expression (`minute hour day month weekday`), checked by APScheduler itself.

    Weekday numbers count from Monday = 0 in APScheduler 3; names (`sun`) say what they mean."""
    from apscheduler.triggers.cron import CronTrigger  # here: loading settings must not import the scheduler

    try:
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"not a valid crontab expression {value!r}: {exc}") from None
    return value


def longest_gap(cron: str) -> float:
    """The longest time in seconds between two consecutive runs of `cron`: what "on schedule" allows.

    `7 * * * *` gives 3600; `0 9-17 * * mon-fri` gives Friday 17:00 to Monday 09:00. Read from the
    first 1,000 fire times (or four years of them) after a fixed date in UTC, so the same schedule
    always gives the same number; daylight-saving shifts in a local timezone are not counted."""
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(cron, timezone="UTC")
    end = _FROM + _HORIZON
    previous = trigger.get_next_fire_time(None, _FROM)
    gap = 0.0
    for _ in range(_FIRES):
        if previous is None or previous > end:
            break
        following = trigger.get_next_fire_time(previous, previous + timedelta(seconds=1))
        if following is None:
            break
        gap = max(gap, (following - previous).total_seconds())
        previous = following
    return gap or _HORIZON.total_seconds()


def local_timezone() -> Any:
    """This machine's timezone, for cron times when none is configured."""
    from tzlocal import get_localzone

    return get_localzone()
