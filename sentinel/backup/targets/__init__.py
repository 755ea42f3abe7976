"""Where a repository's objects live: the `Target` contract, its errors, and `open_target` from settings.

A target stores named immutable objects. Besides plain put/get/list/delete it offers the two
conditional writes that leases need (create-if-absent, replace-if-unchanged), so locking works the
same on a local directory and on S3. On a versioned store (S3 with Object Lock) it also lists every
version of a key and reads a named one: whoever holds the credentials can add a version or a delete
marker, never remove a locked version, so readers address the versions the repository wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sentinel.backup.settings import TargetSettings


class TargetError(Exception):
    """The target failed (unreachable after retries, refused, misconfigured)."""


class ObjectNotFound(TargetError):
    def __init__(self, key: str) -> None:
        super().__init__(f"object {key} not found")
        self.key = key


class ObjectLocked(TargetError):
    """Object Lock (or an equivalent) refuses to delete the object until `until`."""

    def __init__(self, key: str, until: datetime | None) -> None:
        super().__init__(f"object {key} is locked" + (f" until {until.isoformat()}" if until else ""))
        self.key = key
        self.until = until


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class Version:
    """One stored version of a key; `id` is None on a store without versions (a local directory)."""

    id: str | None
    size: int
    modified: datetime


@dataclass
class History:
    """A key's versions, oldest first, and its delete markers (S3 allows adding both under Object Lock)."""

    key: str
    versions: list[Version] = field(default_factory=list)
    delete_markers: int = 0
    hidden: bool = False
    """The key's newest entry is a delete marker: an ordinary listing or GET no longer shows it."""

    @property
    def rewritten(self) -> bool:
        """Something was written or deleted on top of the first version."""
        return len(self.versions) > 1 or self.delete_markers > 0


class Target(Protocol):
    """Named immutable objects. `key`s are `/`-separated relative names such as `chunks/ab/abcd...`."""

    def describe(self) -> str:
        """Where this is, for messages (no credentials)."""
        ...

    lock_days: int | None
    """Days of Object Lock retention given to every object written; None: this target does not lock."""

    def put(self, key: str, data: bytes | bytearray) -> str | None:
        """Store `data` under `key`, atomically: readers see all of it or nothing. Applies Object Lock if
        set. Returns the new version's id (None on a store without versions, or when the server said none)."""
        ...

    def get(self, key: str, version: str | None = None) -> bytes:
        """The object's bytes (of `version` if given, else the current one); raises ObjectNotFound."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """The current objects (a key whose newest entry is a delete marker is not listed)."""
        ...

    def histories(self, prefix: str) -> dict[str, History]:
        """Every key under `prefix` that has a version, with all its versions (hidden keys included)."""
        ...

    def lock_until(self, key: str, version: str | None) -> datetime | None:
        """The version's retain-until date; None if it has no retention."""
        ...

    def extend_lock(self, key: str, version: str | None, until: datetime) -> None:
        """Make the version's retention last at least until `until` (never shortens; no-op without locking)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object for good (every version); raises ObjectLocked if retention forbids it."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        """Create `key` only if it does not exist; the new version's token, or None if it existed."""
        ...

    def get_with_token(self, key: str) -> tuple[bytes, str]:
        """The object and a token naming this exact version, for `put_if_match`; raises ObjectNotFound."""
        ...

    def put_if_match(self, key: str, data: bytes, token: str) -> str | None:
        """Replace `key` only if it is still the version `token`; the new token, or None if it changed."""
        ...

    def delete_if_match(self, key: str, token: str) -> bool:
        """Delete `key` only if it is still the version `token` (best effort on S3: see the implementation)."""
        ...


MAX_LOCK_SLACK_DAYS = 7


def lock_slack_days(lock_days: int) -> int:
    """Days an object is locked beyond `lock_days`: so the next backups need not re-lock what they reuse
    (one `PutObjectRetention` per chunk about once in this many days, instead of at every backup)."""
    return min(lock_days, MAX_LOCK_SLACK_DAYS)


def open_target(settings: TargetSettings, data_dir: Path, *, clock: Callable[[], float] = time.time) -> Target:
    """`clock` (epoch seconds) dates Object Lock retention; tests pass a fake one."""
    if settings.kind == "s3":
        from sentinel.backup.targets.s3 import S3Target

        return S3Target.from_settings(settings, clock=clock)
    from sentinel.backup.targets.local import LocalTarget

    path = settings.path if settings.path.is_absolute() else data_dir / settings.path
    return LocalTarget(path)
