"""What a report asks of the audit trail (`ReportQueries`), and the latency bins its answers use.

The answers come from a `Tally` of the period's verified records (sentinel/report/tally.py): no
query returns more rows than the period has hours x callers, latency bins or listed events.

Latencies are counted in bins (1 ms below 1 s, 10 ms below 10 s, 100 ms below 100 s, 1 s above) and
percentiles are read from the bins, reported as the bin's upper edge: at most 1 % (or 1 ms) high,
never low.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sentinel.report.model import Period


def bin_upper(b: int) -> float:
    """The upper edge (seconds) of latency bin `b` (see `bin_sql`)."""
    if b < 1000:
        return (b + 1) / 1000
    if b < 1900:
        return round(1 + (b - 1000 + 1) / 100, 6)
    if b < 2800:
        return round(10 + (b - 1900 + 1) / 10, 6)
    return float(100 + (b - 2800 + 1))


def value_bin(value: float) -> int:
    """The bin of a latency in seconds: the same arithmetic as `bin_sql`, for stores that return raw values."""
    if value < 1:
        return int(value * 1000)
    if value < 10:
        return 1000 + int((value - 1) * 100)
    if value < 100:
        return 1900 + int((value - 10) * 10)
    return 2800 + int(value - 100)


@dataclass(slots=True)
class Breakdown:
    model: str | None
    operation: str | None
    outcome: str | None
    calls: int
    failed: int
    counted: int
    input_tokens: int
    output_tokens: int


@dataclass(slots=True)
class Bucket:
    """Calls in one time bucket (by one caller, or by everyone when `caller` is None)."""

    caller: str | None
    index: int
    """Bucket number: floor(started_at / bucket seconds)."""
    calls: int
    failed: int
    counted: int


@dataclass(slots=True)
class LatencyBin:
    kind: str
    """`ttft` (streams), `generation` (successful non-streamed chat/completions), `embeddings` (successful)."""
    model: str | None
    bin: int
    count: int


class ReportQueries(Protocol):
    """The aggregations a report needs. Times are Unix seconds; interactions are selected by their
    start, events by when they were recorded."""

    async def breakdown(self, period: Period) -> list[Breakdown]: ...

    async def buckets(self, period: Period, seconds: int, *, by_caller: bool) -> list[Bucket]: ...

    async def users(self, period: Period, top: int) -> tuple[int, int, list[tuple[str, int, int]]]:
        """(distinct end users, calls without one, top users as (blind index, calls, failed))."""

    async def callers_before(self, since: float) -> set[str]:
        """API key ids with at least one interaction before `since`."""

    async def latency_bins(self, period: Period) -> list[LatencyBin]: ...

    async def event_counts(self, period: Period) -> dict[str, int]: ...

    async def events(self, period: Period, types: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """Full event documents (with their `encrypted` part), oldest first."""

    async def span(self) -> dict[str, Any]:
        """The whole store: record count, oldest and newest interaction start and record time."""


def percentile(bins: dict[int, int], q: float) -> float | None:
    """Nearest-rank percentile `q` (0..1) from bin counts, as the bin's upper edge."""
    total = sum(bins.values())
    if total == 0:
        return None
    rank = max(1, int(-(-q * total // 1)))  # ceil(q * total)
    seen = 0
    for b in sorted(bins):
        seen += bins[b]
        if seen >= rank:
            return bin_upper(b)
    return bin_upper(max(bins))
