"""A repository in a local directory (the embedded default, or shared storage mounted on several hosts).

Writes go to a temporary file, are fsynced and renamed into place, so a crash never leaves a
partial object under its final name. Conditional writes (for leases) hold an exclusive `flock` on
`.cas.lock` while they compare and write; flock is honoured across processes on one host and, on
Linux NFS clients, mapped to POSIX byte-range locks that the server arbitrates.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sentinel.backup.targets import History, ObjectInfo, ObjectNotFound, TargetError, Version


class LocalTarget:
    lock_days: int | None = None

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"local directory {self.root}"

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise TargetError(f"refusing object key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes | bytearray) -> str | None:
        path = self._path(key)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise TargetError(f"cannot write {path}: {exc.strerror}") from exc
        return None

    def get(self, key: str, version: str | None = None) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise TargetError(f"cannot read {self._path(key)}: {exc.strerror}") from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Like S3, a prefix need not end at a directory: `locks/backup-` lists `locks/backup-*`.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(directory) if directory else self.root
        if not base.is_dir():
            return
        for directory, dirs, files in os.walk(base):
            # Only into directories that can hold a match: `config` must not walk every chunk.
            rel = Path(directory).relative_to(self.root).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirs[:] = sorted(d for d in dirs if (rel + d + "/").startswith(prefix) or prefix.startswith(rel + d + "/"))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = Path(directory, name)
                try:
                    info = path.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                yield ObjectInfo(key, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))

    def histories(self, prefix: str) -> dict[str, History]:
        return {info.key: History(info.key, [Version(None, info.size, info.modified)]) for info in self.list(prefix)}

    def lock_until(self, key: str, version: str | None) -> datetime | None:
        return None

    def extend_lock(self, key: str, version: str | None, until: datetime) -> None:
        return None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TargetError(f"cannot delete {self._path(key)}: {exc.strerror}") from exc

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".cas.lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _token(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        with self._exclusive():
            if self._path(key).exists():
                return None
            self.put(key, data)
        return self._token(data)

    def get_with_token(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, self._token(data)

    def put_if_match(self, key: str, data: bytes, token: str) -> str | None:
        with self._exclusive():
            try:
                current = self.get(key)
            except ObjectNotFound:
                return None
            if self._token(current) != token:
                return None
            self.put(key, data)
        return self._token(data)

    def delete_if_match(self, key: str, token: str) -> bool:
        with self._exclusive():
            try:
                current = self.get(key)
            except ObjectNotFound:
                return False
            if self._token(current) != token:
                return False
            self.delete(key)
        return True
