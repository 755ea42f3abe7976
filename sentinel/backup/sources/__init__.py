"""What a plan backs up: each `Source` yields `SourceItem`s (files, directories, symlinks, streams).

`build_sources` turns a plan's settings into sources and refuses any plan that would include the
key-encryption key or the backup key (checked up front by path, and again per file by inode while
walking, which also catches symlinked roots and hard links).
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

from sentinel.backup.settings import (
    ElasticsearchSourceSettings,
    KeysSourceSettings,
    PathSourceSettings,
    PlanSettings,
    PostgresSourceSettings,
    SqliteSourceSettings,
)


class SourceError(Exception):
    """A source could not be read (missing, unreadable, dump failed); the message names the source."""


class PlanError(SourceError):
    """The plan itself is not allowed (e.g. it would back up the key-encryption key)."""


Opener = Callable[[], contextlib.AbstractContextManager[IO[bytes]]]


@dataclass
class SourceItem:
    path: str
    type: str = "file"  # file | dir | symlink
    mode: int = 0o644
    mtime_ns: int = 0
    size: int | None = None
    inode: int = 0
    link: str = ""
    opener: Opener | None = None


class Forbidden:
    """Files that must never enter a backup (the KEK and the backup key), matched by path and by inode."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = {what: p.resolve() for what, p in paths.items()}
        self._inodes: dict[tuple[int, int], str] = {}
        for what, path in self.paths.items():
            with contextlib.suppress(OSError):
                info = path.stat()
                self._inodes[(info.st_dev, info.st_ino)] = what

    def which(self, info: os.stat_result) -> str | None:
        return self._inodes.get((info.st_dev, info.st_ino))

    def inside(self, root: Path) -> list[tuple[str, Path]]:
        """Forbidden files at or below `root`."""
        root = root.resolve()
        return [(what, p) for what, p in self.paths.items() if p == root or root in p.parents]


class Source(ABC):
    kind: ClassVar[str]
    reuse_unchanged: ClassVar[bool] = False
    """Files whose size, mtime and inode match the previous snapshot may reuse its chunks unread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.meta: dict[str, Any] = {}

    @abstractmethod
    def items(self, scratch: Path) -> Iterator[SourceItem]:
        """Yield the items; `scratch` is a private temporary directory for consistent copies."""


def build_sources(plan: PlanSettings, data_dir: Path, forbidden: Forbidden, config_file: Path | None) -> list[Source]:
    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else data_dir / path

    sources: list[Source] = []
    for spec in plan.sources:
        name = spec.name or spec.kind
        if isinstance(spec, PathSourceSettings):
            from sentinel.backup.sources.files import PathSource, refuse_forbidden

            root = resolve(spec.path)
            refuse_forbidden(name, root, spec.exclude, forbidden)
            sources.append(PathSource(name, root, spec.exclude, forbidden, missing_ok=spec.missing_ok))
        elif isinstance(spec, KeysSourceSettings):
            from sentinel.backup.sources.files import KeysSource

            config = config_file if spec.include_config else None
            sources.append(KeysSource(name, resolve(spec.path), config, forbidden, missing_ok=spec.missing_ok))
        elif isinstance(spec, SqliteSourceSettings):
            from sentinel.backup.sources.sqlite import SqliteSource

            path = resolve(spec.path)
            if forbidden.inside(path):
                raise PlanError(f"source {name!r}: {path} is a key file, which never enters a backup")
            sources.append(SqliteSource(name, path, spec.newest_record_sql, missing_ok=spec.missing_ok))
        elif isinstance(spec, PostgresSourceSettings):
            from sentinel.backup.sources.postgres import PostgresSource

            sources.append(PostgresSource(name, spec))
        elif isinstance(spec, ElasticsearchSourceSettings):
            from sentinel.backup.sources.elasticsearch import ElasticsearchSource

            sources.append(ElasticsearchSource(name, spec))
    return sources
