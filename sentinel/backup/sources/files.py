"""Files on disk: arbitrary paths and model directories (`PathSource`), and config plus key material
(`KeysSource`, which leaves out the KEK and the backup key by design)."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sentinel.backup.sources import Forbidden, PlanError, Source, SourceError, SourceItem


def _excluded(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.rsplit("/", 1)[-1], p) for p in patterns)


def refuse_forbidden(name: str, root: Path, exclude: list[str], forbidden: Forbidden) -> None:
    """Refuse a path source whose tree holds a key file that its excludes do not leave out."""
    resolved = root.resolve()
    for what, path in forbidden.inside(resolved):
        rel = path.relative_to(resolved).as_posix() if path != resolved else path.name
        if not _excluded(rel, exclude):
            raise PlanError(
                f"source {name!r} would back up the {what} ({path}); keys never enter a backup. "
                f"Exclude it (exclude: ['{rel}']) or back up a narrower path"
            )


def _opener(path: Path) -> object:
    def open_file() -> IO[bytes]:
        try:
            return open(path, "rb", buffering=0)
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from exc

    return open_file


def walk(
    name: str, root: Path, exclude: list[str], forbidden: Forbidden, *, prefix: str = "", skip_forbidden: bool = False
) -> Iterator[SourceItem]:
    """Items below `root` in a stable order; symlinks are recorded, never followed."""
    try:
        top = root.lstat()
    except FileNotFoundError:
        raise SourceError(f"source {name!r}: {root} does not exist") from None
    if stat.S_ISREG(top.st_mode):
        yield from _file_item(name, root, prefix + root.name, top, forbidden, skip_forbidden)
        return
    stack = [(root, prefix.rstrip("/"))]
    while stack:
        directory, rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"source {name!r}: cannot list {directory}: {exc.strerror}") from exc
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            rel_to_root = rel[len(prefix) :] if prefix else rel
            if _excluded(rel_to_root, exclude):
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                yield SourceItem(rel, "dir", mode=stat.S_IMODE(info.st_mode), mtime_ns=info.st_mtime_ns)
                subdirs.append((Path(entry.path), rel))
            elif stat.S_ISLNK(info.st_mode):
                yield SourceItem(rel, "symlink", mode=0o777, link=os.readlink(entry.path))
            elif stat.S_ISREG(info.st_mode):
                yield from _file_item(name, Path(entry.path), rel, info, forbidden, skip_forbidden)
            # sockets, fifos and devices are not data worth restoring
        stack.extend(reversed(subdirs))


def _file_item(
    name: str, path: Path, rel: str, info: os.stat_result, forbidden: Forbidden, skip_forbidden: bool
) -> Iterator[SourceItem]:
    what = forbidden.which(info)
    if what is not None:
        if skip_forbidden:
            return
        raise PlanError(f"source {name!r} reached the {what} at {path}; keys never enter a backup. Refusing the plan")
    yield SourceItem(
        rel,
        "file",
        mode=stat.S_IMODE(info.st_mode),
        mtime_ns=info.st_mtime_ns,
        size=info.st_size,
        inode=info.st_ino,
        opener=_opener(path),  # type: ignore[arg-type]
    )


class PathSource(Source):
    kind = "path"
    reuse_unchanged = True

    def __init__(self, name: str, root: Path, exclude: list[str], forbidden: Forbidden, *, missing_ok: bool) -> None:
        super().__init__(name)
        self.root, self.exclude, self.forbidden, self.missing_ok = root, exclude, forbidden, missing_ok

    def items(self, scratch: Path) -> Iterator[SourceItem]:
        if self.missing_ok and not self.root.exists():
            self.meta["missing"] = True
            return
        self.meta["root"] = str(self.root)
        yield from walk(self.name, self.root, self.exclude, self.forbidden)


class KeysSource(Source):
    """`keys/...` (wrapped data keys, signing keys, ...) and `config/<file>` (the YAML settings)."""

    kind = "keys"
    reuse_unchanged = True

    def __init__(
        self, name: str, keys_dir: Path, config_file: Path | None, forbidden: Forbidden, *, missing_ok: bool
    ) -> None:
        super().__init__(name)
        self.keys_dir, self.config_file, self.forbidden, self.missing_ok = keys_dir, config_file, forbidden, missing_ok

    def items(self, scratch: Path) -> Iterator[SourceItem]:
        self.meta["excluded"] = sorted(self.forbidden.paths)
        if self.keys_dir.is_dir():
            yield SourceItem("keys", "dir", mode=0o700)
            yield from walk(self.name, self.keys_dir, [], self.forbidden, prefix="keys/", skip_forbidden=True)
        elif not self.missing_ok and not self.config_file:
            raise SourceError(f"source {self.name!r}: {self.keys_dir} does not exist")
        if self.config_file is not None:
            yield SourceItem("config", "dir", mode=0o700)
            yield from walk(self.name, self.config_file, [], self.forbidden, prefix="config/")
