"""Restoring a snapshot: chunks fetched in parallel (in order), decrypted, checked, and every file's
SHA-256 compared with the manifest before it gets its final name.

A file is written as `.<name>.partial` and renamed only once its hash matches, so a failed restore
never leaves a plausible-looking but wrong file. Errors name what failed: the chunk id and the
file for a missing or corrupt chunk, the path for a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sentinel.backup.progress import Progress
from sentinel.backup.repository import ChunkError, Repository
from sentinel.backup.run import safe_relative
from sentinel.backup.snapshot import FileEntry, Snapshot
from sentinel.backup.targets import TargetError


class RestoreError(Exception):
    """The restore failed; the message names the file (and chunk) concerned."""

    def __init__(self, message: str, *, path: str | None = None, chunk_id: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.chunk_id = chunk_id


class DiskFull(RestoreError):
    pass


@dataclass
class RestoreResult:
    dest: Path
    files: int = 0
    bytes: int = 0
    verified: int = 0


class Restorer:
    def __init__(self, repository: Repository, *, concurrency: int = 8, progress: Progress | None = None) -> None:
        self.repo = repository
        self.concurrency = concurrency
        self.progress = progress or Progress()

    def chunks(self, entry: FileEntry, pool: ThreadPoolExecutor, *, check_ids: bool = False) -> Iterator[bytes]:
        """The file's plaintext chunks in order, `concurrency * 2` fetched ahead; raises RestoreError."""
        pending: deque[tuple[str, Future[bytes]]] = deque()
        refs = iter(entry.chunks)
        where = f"{entry.source}/{entry.path}"
        try:
            while True:
                while len(pending) < self.concurrency * 2:
                    ref = next(refs, None)
                    if ref is None:
                        break
                    pending.append((ref.id, pool.submit(self.repo.get_chunk, ref, check_id=check_ids)))
                if not pending:
                    return
                chunk_id, future = pending.popleft()
                try:
                    yield future.result()
                except ChunkError as exc:
                    raise RestoreError(f"{where}: {exc}", path=where, chunk_id=exc.chunk_id) from exc
                except TargetError as exc:
                    raise RestoreError(f"{where}: fetching chunk {chunk_id} failed: {exc}", path=where) from exc
        finally:
            for _, future in pending:
                future.cancel()

    def stream(self, entry: FileEntry, pool: ThreadPoolExecutor) -> Iterator[bytes]:
        """Like `chunks`, but raises RestoreError at the end if the whole file's SHA-256 differs."""
        digest = hashlib.sha256()
        for data in self.chunks(entry, pool):
            digest.update(data)
            yield data
        if digest.hexdigest() != entry.sha256:
            where = f"{entry.source}/{entry.path}"
            raise RestoreError(f"{where}: SHA-256 of the restored file does not match the manifest", path=where)

    def restore(
        self, snapshot: Snapshot, dest: Path, *, select: Callable[[FileEntry], bool] | None = None
    ) -> RestoreResult:
        """Restore into `dest/<source>/<path>`; `dest` must be empty or not exist yet."""
        if dest.exists() and any(dest.iterdir()):
            raise RestoreError(f"{dest} is not empty; restore into a new directory")
        entries = [e for e in snapshot.files if select is None or select(e)]
        result = RestoreResult(dest)
        self.progress.begin(f"restoring {snapshot.id}", sum(e.size for e in entries if e.type == "file"))
        directories: list[tuple[Path, FileEntry]] = []
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="restore-fetch") as pool:
            try:
                dest.mkdir(parents=True, exist_ok=True)
                for entry in entries:
                    if not safe_relative(entry.source) or not safe_relative(entry.path):
                        raise RestoreError(f"refusing unsafe path {entry.source}/{entry.path}")
                    path = dest / entry.source / entry.path
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if entry.type == "dir":
                        path.mkdir(exist_ok=True)
                        directories.append((path, entry))
                    elif entry.type == "symlink":
                        os.symlink(entry.link, path)
                    elif entry.type == "file":
                        self.progress.item(f"{entry.source}/{entry.path}")
                        self._file(entry, path, pool)
                        result.files += 1
                        result.bytes += entry.size
                        result.verified += 1
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFull(f"disk full while restoring into {dest}: {exc.strerror}") from exc
                raise RestoreError(f"cannot write into {dest}: {exc}") from exc
        for path, entry in reversed(directories):  # after their contents, which change mtimes
            with contextlib.suppress(OSError):
                os.chmod(path, entry.mode)
                os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
        self.progress.end()
        return result

    def _file(self, entry: FileEntry, path: Path, pool: ThreadPoolExecutor) -> None:
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as handle, ThreadPoolExecutor(1, thread_name_prefix="restore-write") as writer:
                # The file is written by a thread of its own while this one hashes the next chunk
                # (both release the GIL): writing and hashing in turn made them add up.
                writes: deque[Future[int]] = deque()
                for data in self.stream(entry, pool):
                    writes.append(writer.submit(handle.write, data))
                    while len(writes) > 2:
                        self.progress.advance(writes.popleft().result())
                while writes:
                    self.progress.advance(writes.popleft().result())
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(partial, entry.mode)
            if entry.mtime_ns:
                os.utime(partial, ns=(entry.mtime_ns, entry.mtime_ns))
            os.replace(partial, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                where = f"{entry.source}/{entry.path}"
                raise DiskFull(f"disk full while restoring {where} to {path}: {exc.strerror}", path=where) from exc
            raise
