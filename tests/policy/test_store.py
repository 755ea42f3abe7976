"""Hot reload of the policy file under a running proxy: a valid edit takes effect, an invalid one is
rejected and logged while the previous policy stays in force, and every change is kept (who, when,
digests, diff) for the audit trail."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import requests

from sentinel.config import ConfigError
from sentinel.policy.changes import PolicyChange, PolicyHistory
from sentinel.policy.metrics import PolicyMetrics
from sentinel.policy.store import PolicyStore
from tests.conftest import Running, make_settings
from tests.policy.conftest import StartWithPolicy
from tests.support.frames import JSON_HEADERS, chat_completion
from tests.support.upstream import Script, ScriptedUpstream

FIRST = "sampling: []\nrules:\n  - name: words\n    keywords: [alpha]\n    action: redact\n"
SECOND = "sampling: []\nrules:\n  - name: words\n    keywords: [beta]\n    action: redact\n"
BROKEN = "sampling: []\nrules:\n  - name: words\n    keywords: [beta]\n    action: explode\n"


def send(proxy: Running, text: str) -> None:
    response = requests.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": text}]},
        timeout=30,
    )
    assert response.status_code == 200


def forwarded(upstream: ScriptedUpstream) -> str:
    content: str = orjson.loads(upstream.seen[-1].body)["messages"][0]["content"]
    return content


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # coarse mtime clocks


class SteppedSleep:
    """Stands in for `asyncio.sleep` in the policy watcher: each wait lasts until `step()`, which
    returns once the watcher waits again, so the look at the file in between is over."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self._sleeping = 0
        self._woken = 0
        self._changed = asyncio.Condition()

    async def __call__(self, interval: float) -> None:
        self.intervals.append(interval)
        async with self._changed:
            self._sleeping += 1
            self._changed.notify_all()
            turn = self._sleeping
            await self._changed.wait_for(lambda: self._woken >= turn)

    async def step(self) -> None:
        async with asyncio.timeout(30), self._changed:
            await self._changed.wait_for(lambda: self._sleeping > self._woken)
            self._woken += 1
            self._changed.notify_all()
            await self._changed.wait_for(lambda: self._sleeping > self._woken)


async def _step_by_hand(store: PolicyStore, sleep: SteppedSleep, listener: Callable[[PolicyChange], None]) -> None:
    """Restart the watcher on `sleep` (it runs on real sleeps since Sentinel started) and subscribe."""
    await store.stop()
    store.sleep = sleep
    store.subscribe(listener, replay=True)
    store.start()


def test_hot_reload_valid_then_invalid_edit(
    upstream: ScriptedUpstream,
    start_with_policy: StartWithPolicy,
    policy_path: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("ok")]))
    proxy = start_with_policy(upstream.url, FIRST, reload_interval=0.05)
    store: PolicyStore = proxy.sentinel.extras["policy"]
    sleep = SteppedSleep()
    seen: list[PolicyChange] = []
    proxy.servers.run(_step_by_hand(store, sleep, seen.append))
    send(proxy, "alpha and beta")
    assert forwarded(upstream) == "[REDACTED] and beta"
    proxy.servers.run(sleep.step())  # a look at the unchanged file changes nothing
    assert len(seen) == 1

    rewrite(policy_path, SECOND)  # written while the watcher waits: it never sees half a file
    proxy.servers.run(sleep.step())
    assert len(seen) == 2
    send(proxy, "alpha and beta")
    assert forwarded(upstream) == "alpha and [REDACTED]"

    with caplog.at_level(logging.ERROR, logger="sentinel.policy"):
        rewrite(policy_path, BROKEN)
        proxy.servers.run(sleep.step())
    assert len(seen) == 3
    send(proxy, "alpha and beta")
    assert forwarded(upstream) == "alpha and [REDACTED]"  # the previous policy stays in force
    assert "rules[0] 'words' -> action" in caplog.text and "previous policy stays in force" in caplog.text

    startup, applied, rejected = seen
    assert startup.outcome == "applied" and startup.old_digest is None and startup.actor.startswith("startup: uid")
    assert applied.outcome == "applied" and applied.old_digest == startup.new_digest
    assert applied.actor.startswith("file-watcher: uid ")
    assert "-    keywords: [alpha]" in applied.diff and "+    keywords: [beta]" in applied.diff
    assert rejected.outcome == "rejected" and rejected.error is not None and "explode" in rejected.diff
    assert store.current is not None and store.current.digest == applied.new_digest

    history = PolicyHistory(tmp_path / "data" / "policy-history.jsonl").read()
    assert [c.outcome for c in history] == ["applied", "applied", "rejected"]
    assert history[1] == applied
    assert proxy.metric("sentinel_policy_reloads_total", outcome="applied") == 2
    assert proxy.metric("sentinel_policy_reloads_total", outcome="rejected") == 1
    assert sleep.intervals == [0.05] * 4  # the configured interval, before each of the three looks and now
    ready = requests.get(proxy.admin_url + "/readyz", timeout=30).json()
    assert ready["checks"]["policy"] == {"ok": True, "code": "loaded"}
    _, details = proxy.sentinel.extras["admin_state"].readiness()  # the details, as a token holder sees them
    assert details["policy"]["detail"] == applied.new_digest[:19]


def test_touch_without_change_and_repeated_bad_version_are_quiet(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    path = tmp_path / "policy.yaml"
    path.write_text(FIRST)
    registry = CollectorRegistry()
    store = PolicyStore(path, metrics=PolicyMetrics(registry))
    changes: list[PolicyChange] = []
    store.subscribe(changes.append)
    store.load()
    rewrite(path, FIRST)
    assert store.check() is None
    rewrite(path, BROKEN)
    assert store.check() is not None
    rewrite(path, BROKEN)
    assert store.check() is None  # the same bad version is reported once
    path.unlink()
    assert store.check() is None and store.current is not None
    assert [c.outcome for c in changes] == ["applied", "rejected"]
    assert registry.get_sample_value("sentinel_policy_rules", {"kind": "content"}) == 1


def test_listener_failure_does_not_stop_others(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(FIRST)
    store = PolicyStore(path)
    got: list[PolicyChange] = []

    def broken(change: PolicyChange) -> None:
        raise RuntimeError("audit trail down")

    store.subscribe(broken)
    store.subscribe(got.append)
    store.load()
    assert len(got) == 1


def test_invalid_policy_at_start_stops_sentinel_naming_the_setting(tmp_path: Path) -> None:
    from sentinel.server import build

    path = tmp_path / "policy.yaml"
    path.write_text(BROKEN)
    settings = make_settings(tmp_path, "http://127.0.0.1:9", policy={"file": path})
    with pytest.raises(ConfigError) as caught:
        build(settings)
    assert "policy.file (env SENTINEL_POLICY_FILE)" in str(caught.value) and "rules[0] 'words'" in str(caught.value)


def test_policy_settings_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sentinel.config import load_settings

    token = tmp_path / "token"
    token.write_text("dify-secret\n")
    monkeypatch.setenv("SENTINEL_POLICY_FILE", str(tmp_path / "p.yaml"))
    monkeypatch.setenv("SENTINEL_POLICY_RELOAD_INTERVAL", "0.5")
    monkeypatch.setenv("SENTINEL_POLICY_MODERATION_TOKEN_FILE", str(token))
    monkeypatch.setenv("SENTINEL_POLICY_MAX_RULE_LABELS", "7")
    settings = load_settings()
    assert settings.policy.file == tmp_path / "p.yaml" and settings.policy.reload_interval == 0.5
    assert settings.policy.moderation_token is not None
    assert settings.policy.moderation_token.get_secret_value() == "dify-secret"
    assert "dify-secret" not in repr(settings) and settings.policy.max_rule_labels == 7
