"""Failed admin logins: one audit record per client per window with the right count, 429 past the
limit, a valid token never locked out; through the real admin port, with a clock the test moves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from sentinel.admin.auth import hash_token
from sentinel.admin.logins import MAX_PATH_CHARS, OTHER_CLIENTS, FailedLogins
from tests.conftest import Running, wait_until
from tests.support.upstream import ScriptedUpstream

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_windows_count_every_failure_and_end_on_time() -> None:
    clock = Clock()
    logins = FailedLogins(window=60, limit=3, clock=clock)
    for _ in range(5):
        logins.failed("invalid", "/audit/records", "10.0.0.1")
    logins.failed("forbidden", "/reports", "10.0.0.2")
    assert logins.retry_after("10.0.0.1") == 60 and logins.retry_after("10.0.0.2") is None
    clock.now += 59.9
    assert logins.ended() == []
    clock.now += 0.1
    assert logins.retry_after("10.0.0.1") is None  # the window is over: it may try again
    ended = {w.client: w for w in logins.ended()}
    assert ended["10.0.0.1"].count == 5 and ended["10.0.0.1"].reasons == {"invalid": 5}
    assert ended["10.0.0.2"].details(60)["reasons"] == {"forbidden": 1}
    assert logins.ended(everything=True) == []


def test_a_failure_after_the_window_ended_starts_a_new_one_and_keeps_the_old() -> None:
    clock = Clock()
    logins = FailedLogins(window=10, clock=clock)
    logins.failed("invalid", "/a", "c")
    clock.now += 11
    logins.failed("missing", "/b", "c")
    ended = logins.ended()
    assert [(w.count, dict(w.reasons)) for w in ended] == [(1, {"invalid": 1})]
    assert [(w.count, dict(w.reasons)) for w in logins.ended(everything=True)] == [(1, {"missing": 1})]


def test_memory_stays_bounded_whatever_the_number_of_clients() -> None:
    logins = FailedLogins(window=60, max_clients=100, clock=Clock())
    for n in range(10_000):
        logins.failed("invalid", f"/p{n}", f"10.0.{n // 256}.{n % 256}")
    windows = logins.ended(everything=True)
    assert len(windows) == 100
    other = next(w for w in windows if w.client == OTHER_CLIENTS)
    assert other.count == 10_000 - 99 and len(other.paths) == 10
    assert sum(w.count for w in windows) == 10_000


def test_a_record_stays_small_whatever_the_paths_tried() -> None:
    logins = FailedLogins(window=60, clock=Clock())
    for n in range(50):
        logins.failed("invalid", f"/audit/records/{n}" + "a" * 60_000, "10.0.0.1")
    [window] = logins.ended(everything=True)
    assert window.count == 50 and len(window.paths) == 10
    assert all(len(path) == MAX_PATH_CHARS and path.endswith("…") for path in window.paths)
    assert len(repr(window.details(60))) < 3_000


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    """One host holds a whole /64: a new address per attempt neither escapes the limit nor adds records."""
    logins = FailedLogins(window=60, limit=3, clock=Clock())
    for n in range(1000):
        logins.failed("invalid", "/audit/records", f"2001:db8:7:9:{n:x}::1")
    assert logins.retry_after("2001:db8:7:9:ffff::2") == 60
    assert logins.retry_after("2001:db8:7:a::1") is None
    [window] = logins.ended(everything=True)
    assert window.client == "2001:db8:7:9::/64" and window.count == 1000


def test_windows_run_on_the_monotonic_clock_and_record_wall_time() -> None:
    """A wall-clock step (NTP, a VM resumed) neither ends a window early nor stretches it."""
    clock, wall = Clock(), Clock()
    logins = FailedLogins(window=60, limit=1, clock=clock, wall=wall)
    logins.failed("invalid", "/a", "c")
    wall.now += 3600  # the wall clock jumps an hour: the window is still open
    assert logins.retry_after("c") == 60 and logins.ended() == []
    logins.failed("invalid", "/a", "c")
    clock.now += 60
    [window] = logins.ended()
    details = window.details(60)
    assert (details["first_at"], details["last_at"], details["count"]) == (T0, T0 + 3600, 2)


def _tokens(tmp_path: Path) -> Path:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{name: alice, role: auditor, sha256: {hash_token('t-alice')}}}\n")
    return tokens


def test_a_thousand_wrong_tokens_make_one_record_with_the_count(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    proxy = start_sentinel(upstream.url, admin_tokens_file=str(_tokens(tmp_path)), logins={"window": 60, "limit": 10})
    clock = Clock()
    proxy.sentinel.extras["auth"].logins.clock = clock
    url = proxy.admin_url + "/audit/records"

    def attempts(worker: int) -> list[requests.Response]:
        with requests.Session() as session:
            return [
                session.get(url, headers={"Authorization": f"Bearer wrong-{worker}-{n}"}, timeout=30)
                for n in range(100)
            ]

    with ThreadPoolExecutor(10) as pool:  # ten callers at once: the attack is concurrent, and it is quicker
        answers = [a for batch in pool.map(attempts, range(10)) for a in batch]
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {401: 10, 429: 990}
    assert {a.headers["Retry-After"] for a in answers if a.status_code == 429} == {"60"}
    with requests.Session() as session:
        # The right token still works from the same address while wrong ones are refused.
        assert session.get(url, headers={"Authorization": "Bearer t-alice"}, timeout=30).status_code == 200

        def failures() -> list[dict[str, Any]]:
            listed = session.get(
                url, headers={"Authorization": "Bearer t-alice"}, params={"kind": "event", "limit": 50}, timeout=30
            ).json()["records"]
            return [r["event"] for r in listed if r["event"]["type"] == "admin_auth_failed"]

        assert failures() == []  # nothing written while the window is open
        clock.now += 60
        wait_until(lambda: len(failures()) >= 1, timeout=30)
        [event] = failures()
    assert event["actor"] == "client:127.0.0.1"
    details = event["details"]
    assert details["count"] == 1000 and details["reasons"] == {"invalid": 10, "throttled": 990}
    assert details["paths"] == ["/audit/records"] and details["window_seconds"] == 60
    assert proxy.metric("sentinel_admin_auth_failures_total", reason="throttled") == 990
    assert proxy.sentinel.audit is not None and proxy.sentinel.audit.trail.head.seq < 10


def test_windows_still_open_at_shutdown_are_recorded(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    proxy = start_sentinel(upstream.url, admin_tokens_file=str(_tokens(tmp_path)))
    proxy.sentinel.extras["auth"].logins.clock = Clock()
    for _ in range(3):
        assert requests.get(proxy.admin_url + "/audit/records", timeout=30).status_code == 401
    proxy.servers.leave()  # stops Sentinel: the open window goes into the trail before the audit stops
    from tests.audit.test_service import stored

    events = [d["event"] for d in stored(tmp_path / "data", "event") if d["event"]["type"] == "admin_auth_failed"]
    assert [(e["details"]["count"], e["details"]["reasons"]) for e in events] == [(3, {"missing": 3})]


def test_a_long_path_tried_with_a_wrong_token_is_recorded_as_its_route(
    upstream: ScriptedUpstream, start_sentinel: Callable[..., Running], tmp_path: Path
) -> None:
    proxy = start_sentinel(upstream.url, admin_tokens_file=str(_tokens(tmp_path)), logins={"window": 60})
    clock = Clock()
    proxy.sentinel.extras["auth"].logins.clock = clock
    with requests.Session() as session:
        for n in range(3):
            answer = session.get(
                proxy.admin_url + f"/audit/records/{n}" + "a" * 60_000,
                headers={"Authorization": "Bearer nope"},
                timeout=30,
            )
            assert answer.status_code == 401
    [window] = proxy.sentinel.extras["auth"].logins.ended(everything=True)
    assert window.count == 3 and window.paths == ["/audit/records/{record_id}"]
