"""`Tally`: a report's statistics, counted from the signed records themselves as they are verified.

The verifier hands every stored record of the period to the report (`RecordObserver`), parsed from
the bytes whose hashes it checks; the tally counts those. So a report's numbers are what was recorded
and signed, whatever a store's search columns or indexed fields say: an edited column can make
verification name the record, never move a number. Tallies are taken per page in the verifier's
worker processes and merged in order; what they hold is bounded by the period's hours x callers,
distinct end users, latency bins and the events listed, never by the number of records.

Interactions count in the period they started in (`interaction.started_at` in [since, until)),
events in the period they were recorded in. An interaction's record is written when it ends, so the
verifier reads the records written up to `late` seconds after the period (`report.late_records`).
Failures count as the alert rules count them (sentinel/monitoring/rules.py): outcome `error` except
caller mistakes (`upstream_4xx`); client cancellations (`aborted`) are outside the base.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel.audit.store import AuditStore, StoredRecord
from sentinel.report.model import Period
from sentinel.report.queries import Breakdown, Bucket, LatencyBin, value_bin

LATENCY_OPERATIONS = ("chat", "text_completion", "embeddings")


@dataclass
class Tally:
    """Counts over one period's records (see the module docstring)."""

    since: float
    until: float
    burst_window: int
    listed: tuple[str, ...]
    """Event types whose documents are kept (oldest first, `max_listed` of each)."""
    max_listed: int = 1000
    breakdown: dict[tuple[Any, Any, Any], list[int]] = field(default_factory=dict)
    """(model, operation, outcome) -> [calls, failed, counted, input tokens, output tokens]."""
    hourly: dict[tuple[Any, int], list[int]] = field(default_factory=dict)
    """(API key id, hour) -> [calls, failed, counted]."""
    windows: dict[int, list[int]] = field(default_factory=dict)
    """Error-burst window -> [calls, failed, counted]."""
    users: dict[str, list[int]] = field(default_factory=dict)
    """End user's blind index -> [calls, failed]."""
    anonymous: int = 0
    bins: Counter[tuple[str, Any, int]] = field(default_factory=Counter)
    event_counts: Counter[str] = field(default_factory=Counter)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, record: StoredRecord) -> None:
        doc = record.doc
        kind = doc.get("kind")
        if kind == "interaction":
            i = doc.get("interaction")
            if isinstance(i, dict):
                started = i.get("started_at")
                if isinstance(started, (int, float)) and self.since <= started < self.until:
                    self._interaction(i, float(started))
        elif kind == "event":
            event = doc.get("event")
            recorded = doc.get("recorded_at")
            if isinstance(event, dict) and isinstance(recorded, (int, float)) and self.since <= recorded < self.until:
                kind = str(event.get("type"))
                self.event_counts[kind] += 1
                if kind in self.listed:
                    kept = self.events.setdefault(kind, [])
                    if len(kept) < self.max_listed:
                        kept.append(doc)

    def _interaction(self, i: dict[str, Any], started: float) -> None:
        outcome = i.get("outcome")
        failed = int(outcome == "error" and i.get("error_type") != "upstream_4xx")
        counted = int(outcome != "aborted")
        usage = i.get("usage") or {}
        model, operation = i.get("model_requested"), i.get("operation")
        row = self.breakdown.get((model, operation, outcome))
        if row is None:
            row = self.breakdown[(model, operation, outcome)] = [0, 0, 0, 0, 0]
        row[0] += 1
        row[1] += failed
        row[2] += counted
        row[3] += usage.get("input_tokens") or 0
        row[4] += usage.get("output_tokens") or 0
        caller = (i.get("caller") or {}).get("api_key_id")
        for counts in (
            _slot(self.hourly, (caller, int(started // 3600))),
            _slot(self.windows, int(started // self.burst_window)),
        ):
            counts[0] += 1
            counts[1] += failed
            counts[2] += counted
        user = (i.get("caller") or {}).get("user_index")
        if user is None:
            self.anonymous += 1
        else:
            seen = self.users.get(user)
            if seen is None:
                seen = self.users[user] = [0, 0]
            seen[0] += 1
            seen[1] += failed
        stream = bool(i.get("stream"))
        if stream:
            ttft = i.get("ttft_s")
            if isinstance(ttft, (int, float)):
                self.bins[("ttft", model, value_bin(ttft))] += 1
        elif outcome == "ok" and operation in LATENCY_OPERATIONS:
            duration = i.get("duration_s")
            if isinstance(duration, (int, float)):
                kind = "embeddings" if operation == "embeddings" else "generation"
                self.bins[(kind, model, value_bin(duration))] += 1

    def merge(self, other: Tally) -> None:
        for model_key, counts in other.breakdown.items():
            _add(self.breakdown.setdefault(model_key, [0, 0, 0, 0, 0]), counts)
        for hour_key, counts in other.hourly.items():
            _add(self.hourly.setdefault(hour_key, [0, 0, 0]), counts)
        for window, counts in other.windows.items():
            _add(self.windows.setdefault(window, [0, 0, 0]), counts)
        for user, counts in other.users.items():
            _add(self.users.setdefault(user, [0, 0]), counts)
        self.anonymous += other.anonymous
        self.bins.update(other.bins)
        self.event_counts.update(other.event_counts)
        for kind, docs in other.events.items():
            kept = self.events.setdefault(kind, [])
            kept.extend(docs)
            kept.sort(key=_event_order)
            del kept[self.max_listed :]


def _slot(table: dict[Any, list[int]], key: Any) -> list[int]:
    counts = table.get(key)
    if counts is None:
        counts = table[key] = [0, 0, 0]
    return counts


def _add(into: list[int], counts: list[int]) -> None:
    for n, value in enumerate(counts):
        into[n] += value


def _event_order(doc: dict[str, Any]) -> tuple[float, str]:
    return float(doc.get("recorded_at") or 0.0), str(doc.get("doc_id"))


class TallyQueries:
    """`ReportQueries` answered from a `Tally` of verified records; what lies before the period (has a
    caller called before? how far back does the store go?) from the store."""

    def __init__(self, tally: Tally, store: AuditStore) -> None:
        self.tally = tally
        self.store = store

    def _check(self, period: Period) -> None:
        if (period.since, period.until) != (self.tally.since, self.tally.until):
            raise ValueError(f"this tally counts [{self.tally.since}, {self.tally.until}), not {period}")

    async def breakdown(self, period: Period) -> list[Breakdown]:
        self._check(period)
        return [Breakdown(*key, *counts) for key, counts in self.tally.breakdown.items()]

    async def buckets(self, period: Period, seconds: int, *, by_caller: bool) -> list[Bucket]:
        self._check(period)
        if by_caller and seconds == 3600:
            return [Bucket(caller, index, *counts) for (caller, index), counts in self.tally.hourly.items()]
        if not by_caller and seconds == self.tally.burst_window:
            return [Bucket(None, index, *counts) for index, counts in self.tally.windows.items()]
        raise ValueError(f"this tally has no buckets of {seconds} s {'by caller' if by_caller else ''}")

    async def users(self, period: Period, top: int) -> tuple[int, int, list[tuple[str, int, int]]]:
        self._check(period)
        ranked = sorted(self.tally.users.items(), key=lambda item: (-item[1][0], item[0]))[:top]
        return len(self.tally.users), self.tally.anonymous, [(u, c[0], c[1]) for u, c in ranked]

    async def callers_before(self, since: float) -> set[str]:
        return await self.store.callers_before(since)

    async def latency_bins(self, period: Period) -> list[LatencyBin]:
        self._check(period)
        return [LatencyBin(kind, model, b, count) for (kind, model, b), count in self.tally.bins.items()]

    async def event_counts(self, period: Period) -> dict[str, int]:
        self._check(period)
        return dict(self.tally.event_counts)

    async def events(self, period: Period, types: Sequence[str], limit: int) -> list[dict[str, Any]]:
        self._check(period)
        missing = [t for t in types if t not in self.tally.listed]
        if missing:
            raise ValueError(f"this tally keeps no {', '.join(missing)} events")
        docs = [doc for t in types for doc in self.tally.events.get(t, [])]
        docs.sort(key=_event_order)
        return docs[:limit]

    async def span(self) -> dict[str, Any]:
        return await self.store.span()
