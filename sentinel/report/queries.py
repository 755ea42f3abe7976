"""What a report asks of the audit store, answered store-side: `ReportQueries`, and its SQL form over the
embedded store's metadata columns (`EmbeddedQueries`). No query returns more rows than the period has
hours x callers, latency bins or listed events; nothing loads every record.

Failures count as the alert rules count them (sentinel/monitoring/rules.py): outcome `error` except
caller mistakes (`upstream_4xx`); client cancellations (`aborted`) are outside the base.

Latencies are counted in bins (1 ms below 1 s, 10 ms below 10 s, 100 ms below 100 s, 1 s above) and
percentiles are read from the bins, reported as the bin's upper edge: at most 1 % (or 1 ms) high,
never low.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.report.model import Period

FAILED_SQL = "(outcome = 'error' AND error_type IS NOT 'upstream_4xx')"
COUNTED_SQL = "(outcome IS NOT 'aborted')"


def bin_sql(value: str) -> str:
    return (
        f"CASE WHEN {value} < 1 THEN CAST({value} * 1000 AS INTEGER) "
        f"WHEN {value} < 10 THEN 1000 + CAST(({value} - 1) * 100 AS INTEGER) "
        f"WHEN {value} < 100 THEN 1900 + CAST(({value} - 10) * 10 AS INTEGER) "
        f"ELSE 2800 + CAST({value} - 100 AS INTEGER) END"
    )


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
    """Store-side aggregations a report needs. Times are Unix seconds; interactions are selected by
    `started_at`, events by `recorded_at` (events carry no start time column)."""

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


class EmbeddedQueries:
    """`ReportQueries` as SQL over `EmbeddedStore`'s metadata columns (read-only statements)."""

    def __init__(self, store: EmbeddedStore) -> None:
        self.store = store

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self.store.execute(sql, params)

    _PERIOD = "kind = 'interaction' AND started_at >= ? AND started_at < ?"

    async def breakdown(self, period: Period) -> list[Breakdown]:
        rows = await self._rows(
            f"SELECT model, operation, outcome, COUNT(*), SUM({FAILED_SQL}), SUM({COUNTED_SQL}), "
            f"COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM records WHERE {self._PERIOD} "
            "GROUP BY model, operation, outcome",
            (period.since, period.until),
        )
        return [Breakdown(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7])) for r in rows]

    async def buckets(self, period: Period, seconds: int, *, by_caller: bool) -> list[Bucket]:
        caller = "api_key_id" if by_caller else "NULL"
        rows = await self._rows(
            f"SELECT {caller}, CAST(started_at / ? AS INTEGER) b, COUNT(*), SUM({FAILED_SQL}), SUM({COUNTED_SQL}) "
            f"FROM records WHERE {self._PERIOD} GROUP BY 1, 2",
            (seconds, period.since, period.until),
        )
        return [Bucket(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def users(self, period: Period, top: int) -> tuple[int, int, list[tuple[str, int, int]]]:
        (distinct, anonymous), *_ = await self._rows(
            f"SELECT COUNT(DISTINCT user_index), SUM(user_index IS NULL) FROM records WHERE {self._PERIOD}",
            (period.since, period.until),
        )
        rows = await self._rows(
            f"SELECT user_index, COUNT(*) c, SUM({FAILED_SQL}) FROM records WHERE {self._PERIOD} "
            "AND user_index IS NOT NULL GROUP BY user_index ORDER BY c DESC, user_index LIMIT ?",
            (period.since, period.until, top),
        )
        return int(distinct or 0), int(anonymous or 0), [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def callers_before(self, since: float) -> set[str]:
        rows = await self._rows(
            "SELECT DISTINCT api_key_id FROM records WHERE kind = 'interaction' AND started_at < ? "
            "AND api_key_id IS NOT NULL",
            (since,),
        )
        return {str(r[0]) for r in rows}

    async def latency_bins(self, period: Period) -> list[LatencyBin]:
        value = "(CASE WHEN stream = 1 THEN ttft_s ELSE duration_s END)"
        rows = await self._rows(
            "SELECT CASE WHEN stream = 1 THEN 'ttft' WHEN operation = 'embeddings' THEN 'embeddings' "
            f"ELSE 'generation' END k, model, {bin_sql(value)} b, COUNT(*) FROM records WHERE {self._PERIOD} "
            "AND ((stream = 1 AND ttft_s IS NOT NULL) OR (stream = 0 AND outcome = 'ok' "
            "AND operation IN ('chat', 'text_completion', 'embeddings'))) GROUP BY 1, 2, 3",
            (period.since, period.until),
        )
        return [LatencyBin(str(r[0]), r[1], int(r[2]), int(r[3])) for r in rows]

    async def event_counts(self, period: Period) -> dict[str, int]:
        rows = await self._rows(
            "SELECT event_type, COUNT(*) FROM records WHERE kind = 'event' AND recorded_at >= ? AND recorded_at < ? "
            "GROUP BY event_type",
            (period.since, period.until),
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def events(self, period: Period, types: Sequence[str], limit: int) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(types))
        rows = await self._rows(
            "SELECT body FROM records WHERE kind = 'event' AND recorded_at >= ? AND recorded_at < ? "
            f"AND event_type IN ({marks}) ORDER BY recorded_at, doc_id LIMIT ?",
            (period.since, period.until, *types, limit),
        )
        return [orjson.loads(r[0]) for r in rows]

    async def span(self) -> dict[str, Any]:
        (count, oldest, newest, first_recorded, last_recorded), *_ = await self._rows(
            "SELECT COUNT(*), MIN(started_at), MAX(started_at), MIN(recorded_at), MAX(recorded_at) FROM records"
        )
        return {
            "records": int(count),
            "oldest_started_at": oldest,
            "newest_started_at": newest,
            "oldest_recorded_at": first_recorded,
            "newest_recorded_at": last_recorded,
        }


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
