"""Policy changes as auditable events: `PolicyChange` (who, when, old and new digest, unified diff)
and `PolicyHistory`, the local JSON-lines file that keeps every change until the audit trail takes
them (connect it with `PolicyStore.subscribe`)."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import pwd
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

log = logging.getLogger("sentinel.policy")


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """Fires once a policy file version has been judged: `applied` (now in force, including the first
    load at start) or `rejected` (invalid; the previous policy stays in force)."""

    at: float
    """Unix time the change was judged."""
    actor: str
    """Who made it, as far as the file says: `file-watcher: uid 1000 (alice)` (the file's owner)."""
    path: str
    outcome: Literal["applied", "rejected"]
    old_digest: str | None
    new_digest: str
    diff: str
    """Unified diff from the policy in force to this version."""
    error: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))


def file_actor(stat: os.stat_result, how: str = "file-watcher") -> str:
    try:
        owner = pwd.getpwuid(stat.st_uid).pw_name
    except KeyError:
        owner = "unknown"
    return f"{how}: uid {stat.st_uid} ({owner})"


def unified_diff(old: str, new: str, path: str, old_digest: str | None, new_digest: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{path}@{(old_digest or 'none')[:19]}",
            tofile=f"{path}@{new_digest[:19]}",
        )
    )


class PolicyHistory:
    """Appends each change to a JSON-lines file (a listener for `PolicyStore.subscribe`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def __call__(self, change: PolicyChange) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("ab") as handle:
            handle.write(change.to_json() + b"\n")

    def read(self) -> list[PolicyChange]:
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        return [PolicyChange(**orjson.loads(line)) for line in lines if line.strip()]


def log_change(change: PolicyChange) -> None:
    """A listener that logs the change (the diff only at debug level: it can be long)."""
    if change.outcome == "applied":
        log.info(
            "policy %s applied (%s, was %s) by %s",
            change.path,
            change.new_digest[:19],
            (change.old_digest or "none")[:19],
            change.actor,
        )
    else:
        log.error("policy %s rejected, previous policy stays in force: %s", change.path, change.error)
    if change.diff:
        log.debug("policy diff:\n%s", change.diff)
