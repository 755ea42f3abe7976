"""The rules and arithmetic under the report, one by one: latency bins and percentiles, the anomaly
rules' edges (time zones, busy callers, bursts), transmission findings, the `report` settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sentinel.config import ConfigError, load_settings
from sentinel.report import anomalies
from sentinel.report.configuration import transmission
from sentinel.report.model import Period
from sentinel.report.queries import Bucket, bin_upper, percentile, value_bin
from sentinel.report.settings import ReportSettings

HOUR = 3600


def test_latency_bins_are_at_most_1_percent_high_and_percentiles_never_read_low() -> None:
    for value in (0.0004, 0.2137, 0.999, 1.0, 1.234, 9.99, 10.0, 42.42, 99.95, 100.0, 250.7):
        assert value <= bin_upper(value_bin(value)) <= value * 1.01 + 0.001, value
    counts = {value_bin(v): 1 for v in [i / 100 for i in range(1, 101)]}  # 0.01 .. 1.00 s
    assert percentile(counts, 0.5) == 0.501
    assert percentile(counts, 0.95) == 0.951
    assert percentile(counts, 1.0) == 1.01
    assert percentile({}, 0.95) is None


def test_off_hours_follow_the_configured_time_zone() -> None:
    berlin = ReportSettings(timezone="Europe/Berlin")
    tuesday_0630_utc = datetime(2026, 11, 24, 6, 30, tzinfo=UTC).timestamp() // HOUR
    assert anomalies.off_hours(ReportSettings(), int(tuesday_0630_utc))  # 06:00 UTC: before 07:00
    assert not anomalies.off_hours(berlin, int(tuesday_0630_utc))  # 07:00 in Berlin: working hours
    saturday_noon = datetime(2026, 11, 28, 12, tzinfo=UTC).timestamp() // HOUR
    assert anomalies.off_hours(ReportSettings(), int(saturday_noon))


def test_busy_callers_are_not_spikes_but_a_quiet_callers_burst_is() -> None:
    start = datetime(2026, 11, 23, tzinfo=UTC).timestamp()  # a Monday
    period = Period(start, start + 5 * 24 * HOUR)
    first = int(start // HOUR)
    busy = [Bucket("busy", first + d * 24 + h, 300, 0, 300) for d in range(5) for h in range(8, 18)]
    quiet = [Bucket("quiet", first + d * 24 + 10, 5, 0, 5) for d in range(5)]
    quiet.append(Bucket("quiet", first + 3 * 24 + 14, 60, 0, 60))
    found = anomalies.caller_anomalies(ReportSettings(), period, busy + quiet)
    assert [(f.rule, f.evidence["caller"], f.evidence["peak"]) for f in found] == [
        ("anomaly.volume_spike", "quiet", 60)
    ]


def test_error_bursts_need_both_count_and_share() -> None:
    rules = ReportSettings()
    windows = [
        Bucket(None, 100, 200, 12, 200),  # 12 failures but 6 %: not a burst
        Bucket(None, 101, 20, 12, 20),  # 60 %: burst
        Bucket(None, 102, 14, 10, 14),  # adjacent: same burst
        Bucket(None, 110, 9, 9, 9),  # 100 % but fewer than 10
    ]
    (burst,) = anomalies.error_bursts(rules, windows)
    assert burst.evidence == {"from": "1970-01-01T08:25:00Z", "to": "1970-01-01T08:35:00Z", "failed": 22, "calls": 34}


def test_new_callers_only_when_the_store_has_history() -> None:
    period = Period(1000.0, 2000.0)
    assert anomalies.new_callers(period, {"a", "b"}, {"a"}, history=False) == []
    assert [f.evidence for f in anomalies.new_callers(period, {"a", "b"}, {"a"}, history=True)] == [{"caller": "b"}]


def test_cleartext_links_off_this_host_are_findings(tmp_path: object) -> None:
    local = load_settings(None, data_dir="d", upstream={"url": "http://127.0.0.1:8000"})
    assert transmission(local)[1] == []
    remote = load_settings(
        None,
        data_dir="d",
        upstream={"url": "http://vllm.internal:8000"},
        elasticsearch={"url": "https://es:9200", "verify_certs": False},
        audit={"store": "elasticsearch"},
    )
    section, findings = transmission(remote)
    assert [f.rule for f in findings] == ["transmission.cleartext", "transmission.unverified_tls"]
    assert {link["endpoint"] for link in section["links"]} == {"http://vllm.internal:8000", "https://es:9200"}


def test_report_settings_from_env_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_REPORT_TIMEZONE", "America/New_York")
    monkeypatch.setenv("SENTINEL_REPORT_OFF_HOURS_MIN", "5")
    settings = load_settings(None)
    assert (settings.report.timezone, settings.report.off_hours_min) == ("America/New_York", 5)
    monkeypatch.setenv("SENTINEL_REPORT_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError, match=r"report.timezone \(env SENTINEL_REPORT_TIMEZONE\): .*unknown time zone"):
        load_settings(None)
    monkeypatch.setenv("SENTINEL_REPORT_TIMEZONE", "UTC")
    monkeypatch.setenv("SENTINEL_REPORT_BUSINESS_HOURS", "[19, 7]")
    with pytest.raises(ConfigError, match="business_hours"):
        load_settings(None)
