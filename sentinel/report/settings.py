"""The `report` settings section (env `SENTINEL_REPORT_*`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from sentinel.sections import Section as _Section


class ReportSettings(_Section):
    """Compliance reports (`sentinel report`, docs/report.md): the rules that flag anomalies and how times read.

    Business hours are local to ``timezone``; a caller's hour outside them with at least
    ``off_hours_min`` calls is flagged. An hour with more than ``max(spike_min, spike_factor x`` the
    caller's 90th-percentile hourly volume over the period``)`` calls is a volume spike. A
    ``error_burst_window`` with at least ``error_burst_min`` failures making up at least
    ``error_burst_ratio`` of its calls is an error burst.
    """

    timezone: str = Field(default="UTC", description="IANA zone for business hours and the report's local times.")
    business_hours: tuple[int, int] = Field(default=(7, 19), description="[start, end) hour of the working day.")
    business_days: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], description="Working weekdays, Monday = 0."
    )
    off_hours_min: int = Field(default=20, ge=1, description="Calls by one caller in one off-hours hour to flag it.")
    spike_factor: float = Field(default=5.0, gt=1)
    spike_min: int = Field(default=50, ge=1)
    error_burst_window: int = Field(default=300, ge=60, le=3600, description="Seconds.")
    error_burst_min: int = Field(default=10, ge=1)
    error_burst_ratio: float = Field(default=0.5, gt=0, le=1)
    auth_failures_high: int = Field(default=5, ge=1, description="Failed admin logins from one client: high severity.")
    max_listed: int = Field(default=1000, ge=10, description="Rows listed per table (access events, exceptions).")
    late_records: float = Field(
        default=3600.0,
        ge=0,
        description="A call counts in the period it started in, and its record is written when it ends: records "
        "written up to this many seconds after the period are read (and verified) for the calls that started in it.",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from None
        return value

    @field_validator("business_hours")
    @classmethod
    def _hours(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] < value[1] <= 24:
            raise ValueError("business_hours must be [start, end) with 0 <= start < end <= 24")
        return value

    @field_validator("business_days")
    @classmethod
    def _days(cls, value: list[int]) -> list[int]:
        if any(not 0 <= day <= 6 for day in value):
            raise ValueError("business_days are weekday numbers, Monday = 0 to Sunday = 6")
        return sorted(set(value))
