"""`PolicyStore`: the policy in force, and its hot reload.

A background task polls the file (mtime, size, inode: editors that save by renaming and Kubernetes
ConfigMap symlink swaps both show up) every `interval` seconds. A changed file is read and compiled
off the event loop; a valid version replaces the policy in one reference swap (calls in flight
keep the version they started with), an invalid one is logged and the previous policy stays.
Either way a `PolicyChange` goes to every subscriber: the log, the local history file, and later
the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sentinel.policy.changes import PolicyChange, file_actor, unified_diff
from sentinel.policy.compiled import Policy
from sentinel.policy.loading import PolicyError, digest, parse_policy
from sentinel.policy.metrics import PolicyMetrics

log = logging.getLogger("sentinel.policy")

Listener = Callable[[PolicyChange], None]
Sleep = Callable[[float], Awaitable[None]]
_KEPT_CHANGES = 100


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class PolicyStore:
    """Holds `current`; `load()` once at start (raises `PolicyError`), then `start()` watches the file."""

    def __init__(
        self, path: Path, *, interval: float = 2.0, metrics: PolicyMetrics | None = None, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.path = path
        self.interval = interval
        self.metrics = metrics
        self.sleep = sleep
        """How the watcher waits `interval` seconds before each look (read at every wait; tests step it)."""
        self.current: Policy | None = None
        self._listeners: list[Listener] = []
        self.changes: list[PolicyChange] = []
        """The latest changes (at most 100), for subscribers that arrive late."""
        self._seen: tuple[int, int, int] | None = None
        self._rejected: str | None = None
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, listener: Listener, *, replay: bool = False) -> None:
        """Call `listener` with every `PolicyChange` (applied or rejected), on the event loop (or the
        caller of `load`/`check`). This is the seam for the audit trail; `replay=True` first hands it
        the changes it missed (the load at start included). A listener that raises is logged and
        does not affect the others."""
        if replay:
            for change in self.changes:
                self._call(listener, change)
        self._listeners.append(listener)

    def load(self) -> Policy:
        """The first load, at start: an invalid file stops Sentinel instead of running without policy."""
        stat = self._stat()
        text = self._read()
        policy = parse_policy(text, f"policy file {self.path}")
        self._seen = _signature(stat)
        self._publish(self._apply(policy, file_actor(stat, "startup")))
        return policy

    def check(self) -> PolicyChange | None:
        """Reload if the file changed since the last look, and tell the subscribers (blocking I/O)."""
        change = self._check()
        if change is not None:
            self._publish(change)
        return change

    def _check(self) -> PolicyChange | None:
        try:
            stat = self.path.stat()
        except OSError as exc:
            if self._seen is not None:
                log.error("policy file %s unreadable (%s); previous policy stays in force", self.path, exc.strerror)
                self._seen = None
            return None
        signature = _signature(stat)
        if signature == self._seen:
            return None
        self._seen = signature
        try:
            text = self._read()
        except PolicyError as exc:
            return self._reject(str(exc), "", stat)
        new_digest = digest(text)
        if self.current is not None and new_digest == self.current.digest:
            return None  # touched, not changed
        if new_digest == self._rejected:
            return None
        try:
            policy = parse_policy(text, f"policy file {self.path}")
        except PolicyError as exc:
            self._rejected = new_digest
            return self._reject(str(exc), text, stat)
        return self._apply(policy, file_actor(stat))

    def _stat(self) -> os.stat_result:
        try:
            return self.path.stat()
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {self.path}: {exc.strerror}") from None

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {self.path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise PolicyError(f"policy file {self.path} is not UTF-8 text") from None

    def _apply(self, policy: Policy, actor: str) -> PolicyChange:
        old = self.current
        change = PolicyChange(
            at=time.time(),
            actor=actor,
            path=str(self.path),
            outcome="applied",
            old_digest=old.digest if old else None,
            new_digest=policy.digest,
            diff=unified_diff(
                old.text if old else "", policy.text, str(self.path), old.digest if old else None, policy.digest
            ),
        )
        self.current = policy
        self._rejected = None
        if self.metrics is not None:
            self.metrics.applied(policy.counts())
        return change

    def _reject(self, error: str, text: str, stat: os.stat_result) -> PolicyChange:
        old = self.current
        new_digest = digest(text)
        change = PolicyChange(
            at=time.time(),
            actor=file_actor(stat),
            path=str(self.path),
            outcome="rejected",
            old_digest=old.digest if old else None,
            new_digest=new_digest,
            diff=unified_diff(old.text if old else "", text, str(self.path), old.digest if old else None, new_digest),
            error=error,
        )
        if self.metrics is not None:
            self.metrics.rejected()
        return change

    def _publish(self, change: PolicyChange) -> None:
        self.changes.append(change)
        del self.changes[:-_KEPT_CHANGES]
        for listener in self._listeners:
            self._call(listener, change)

    @staticmethod
    def _call(listener: Listener, change: PolicyChange) -> None:
        try:
            listener(change)
        except Exception:
            log.exception("policy change listener %r failed", listener)

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="policy-watcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await self.sleep(self.interval)
            try:
                # File I/O and compiling run on a thread; subscribers are called here, on the loop.
                change = await asyncio.to_thread(self._check)
            except Exception:
                log.exception("policy reload failed; previous policy stays in force")
                continue
            if change is not None:
                self._publish(change)
