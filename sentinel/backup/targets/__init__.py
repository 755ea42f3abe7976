"""Where a repository's objects live: the `Target` contract, its errors, and `open_target` from settings.

A target stores named immutable objects. Besides plain put/get/list/delete it offers the two
conditional writes that leases need (create-if-absent, replace-if-unchanged), so locking works the
same on a local directory and on S3.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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


class Target(Protocol):
    """Named immutable objects. `key`s are `/`-separated relative names such as `chunks/ab/abcd...`."""

    def describe(self) -> str:
        """Where this is, for messages (no credentials)."""
        ...

    def put(self, key: str, data: bytes | bytearray) -> None:
        """Store `data` under `key`, atomically: readers see all of it or nothing. Applies Object Lock if set."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; raises ObjectNotFound."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

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


def open_target(settings: TargetSettings, data_dir: Path) -> Target:
    if settings.kind == "s3":
        from sentinel.backup.targets.s3 import S3Target

        return S3Target.from_settings(settings)
    from sentinel.backup.targets.local import LocalTarget

    path = settings.path if settings.path.is_absolute() else data_dir / settings.path
    return LocalTarget(path)
