"""Which snapshots to keep: the newest `keep_last`, plus the newest snapshot of each of the last N
days, ISO weeks and months that have one (restic's `forget --keep-*` rule). Buckets are in UTC."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sentinel.backup.settings import RetentionSettings
from sentinel.backup.snapshot import Snapshot


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 1
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 12

    @classmethod
    def from_settings(cls, settings: RetentionSettings) -> RetentionPolicy:
        return cls(settings.keep_last, settings.keep_daily, settings.keep_weekly, settings.keep_monthly)

    def apply(self, snapshots: Sequence[Snapshot]) -> tuple[list[Snapshot], list[Snapshot]]:
        """(keep, forget), each newest first."""
        newest_first = sorted(snapshots, key=lambda s: (s.finished, s.id), reverse=True)
        keep_ids = {s.id for s in newest_first[: max(self.keep_last, 1)]}

        def when(s: Snapshot) -> datetime:
            return datetime.fromtimestamp(s.finished, UTC)

        buckets: list[tuple[int, Callable[[datetime], object]]] = [
            (self.keep_daily, lambda t: t.date()),
            (self.keep_weekly, lambda t: t.isocalendar()[:2]),
            (self.keep_monthly, lambda t: (t.year, t.month)),
        ]
        for count, bucket in buckets:
            seen: set[object] = set()
            for snapshot in newest_first:
                key = bucket(when(snapshot))
                if key in seen:
                    continue
                if len(seen) >= count:
                    break
                seen.add(key)
                keep_ids.add(snapshot.id)
        keep = [s for s in newest_first if s.id in keep_ids]
        forget = [s for s in newest_first if s.id not in keep_ids]
        return keep, forget
