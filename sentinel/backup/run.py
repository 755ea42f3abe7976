"""Taking a snapshot: read every source, chunk, deduplicate, seal and upload new chunks, then commit.

Memory stays bounded whatever the file sizes: the chunker holds two maximum-size chunks, and at
most `max_in_flight` sealed chunks wait for upload. A chunk is reused without a read only when the
repository vouches for it: an authentic manifest records it (with its version), or this run
uploaded it. A chunk that is merely listed (left by a failed run, or put there by whoever holds the
bucket's credentials after a prune deleted the original) is read and authenticated first, and
uploaded again unless it opens to exactly this chunk; that is also how a run resumes after a
failed one without uploading its finished chunks again. Files whose size, mtime and inode
match the previous snapshot of the plan reuse its chunk list without being read. The manifest is
written last; until then the snapshot does not exist.

Each chunk reference records the object version the repository wrote, so restores read exactly that
version whatever is written on top. On a target with Object Lock, a reused chunk whose lock (as the
previous manifest records it, or unknown) ends before this snapshot's would be extended, so every
snapshot is protected for `object_lock_days` from when it was taken, whichever older snapshot first
uploaded its chunks. Uploads and extensions lock `lock_slack_days` longer than that, so unchanged
data is re-locked about once in that many days, not at every run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sentinel.backup.chunking import Chunker, HashingReader
from sentinel.backup.progress import Progress
from sentinel.backup.repository import Repository, chunk_key
from sentinel.backup.snapshot import ChunkRef, FileEntry, Snapshot, SourceRecord, new_snapshot_id
from sentinel.backup.sources import Source, SourceError, SourceItem
from sentinel.backup.targets import TargetError, lock_slack_days

log = logging.getLogger("sentinel.backup")


class BackupFailed(Exception):
    """The run did not complete; no snapshot was written. Chunks already uploaded are kept for the next run."""


@dataclass
class RunStats:
    files: int = 0
    bytes_read: int = 0
    bytes_unchanged: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    uploaded_bytes: int = 0
    locks_extended: int = 0


DAY = 86400.0


def safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts


class BackupRun:
    def __init__(
        self,
        repository: Repository,
        plan: str,
        sources: Iterable[Source],
        *,
        concurrency: int = 8,
        progress: Progress | None = None,
        scheduled_for: float | None = None,
        scratch_root: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` (epoch seconds) dates Object Lock retention, as the target's own clock does."""
        self.repo = repository
        self.clock = clock
        self.plan = plan
        self.sources = list(sources)
        self.concurrency = concurrency
        self.progress = progress or Progress()
        self.scheduled_for = scheduled_for
        self.scratch_root = scratch_root
        self.stats = RunStats()
        self._known: set[str] = set()
        """Chunk ids this run already decided about (reused or uploaded): never sent twice."""
        self._versions: dict[str, str | None] = {}
        """Chunk id → the version the repository vouches for: recorded by an authentic manifest, or
        uploaded (or authenticated) by this run."""
        self._listed: dict[str, str | None] = {}
        """Chunk ids in the listing but vouched for by nothing: read and authenticated before reuse."""
        self._locked: dict[str, float] = {}
        self._lock_start = 0.0
        self._slots = threading.BoundedSemaphore(concurrency * 2)
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._futures: list[Future[None]] = []

    def _parent(self) -> dict[tuple[str, str], FileEntry]:
        """The plan's previous snapshot's files; every authentic manifest's chunks (of any plan) become
        vouched for, with the version and lock it records."""
        # A damaged old manifest is left out by `snapshots` (and logged): it must not stop today's backup.
        every = self.repo.snapshots()
        for snapshot in every:
            for entry in snapshot.files:
                for ref in entry.chunks:
                    self._locked[ref.id] = max(self._locked.get(ref.id, 0.0), ref.locked_until)
                    if ref.id not in self._versions or self._versions[ref.id] is None:
                        self._versions[ref.id] = ref.version
        previous = [s for s in every if s.plan == self.plan]
        if not previous:
            return {}
        return {(f.source, f.path): f for f in previous[-1].files if f.type == "file"}

    def run(self) -> Snapshot:
        started = time.time()
        snapshot = Snapshot(
            id=new_snapshot_id(started),
            plan=self.plan,
            started=started,
            hostname=socket.gethostname(),
            scheduled_for=self.scheduled_for,
        )
        self._lock_start = self.clock()
        self.progress.begin("listing repository", None)
        listed = {cid: version for cid, (_, version) in self.repo.chunk_versions().items()}
        parent = self._parent()
        # A vouched chunk that is no longer listed was deleted: upload it again. One whose recorded
        # version is not the first listed (versions deleted underneath?) is read before reuse.
        recorded = self._versions
        self._versions = {cid: v for cid, v in recorded.items() if cid in listed and v == listed[cid]}
        self._listed = {cid: recorded.get(cid, v) for cid, v in listed.items() if cid not in self._versions}
        self.progress.end()
        chunker = Chunker(self.repo.chunker)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="backup-upload")
        try:
            with tempfile.TemporaryDirectory(prefix="sentinel-backup-", dir=self.scratch_root) as scratch:
                for source in self.sources:
                    record = SourceRecord(source.name, source.kind)
                    source_scratch = Path(scratch, source.name)
                    source_scratch.mkdir(mode=0o700)
                    self.progress.begin(f"{self.plan}: {source.name}", None)
                    for item in source.items(source_scratch):
                        self._raise_if_failed()
                        if not safe_relative(item.path):
                            raise SourceError(f"source {source.name!r} produced an unsafe path {item.path!r}")
                        snapshot.files.append(self._entry(source, item, parent, chunker, pool))
                    record.meta = dict(source.meta)
                    snapshot.sources.append(record)
                    self.progress.end()
                self.progress.begin("finishing uploads", None)
                for future in self._futures:
                    future.result()
                self.progress.end()
                self._record_versions(snapshot)
                self._extend_locks(snapshot, pool)
        except (SourceError, TargetError) as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            raise BackupFailed(str(self._error or exc)) from exc
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        snapshot.finished = time.time()
        snapshot.uploaded_bytes = self.stats.uploaded_bytes
        return snapshot

    def _record_versions(self, snapshot: Snapshot) -> None:
        for entry in snapshot.files:
            for ref in entry.chunks:
                if ref.version is None:  # a version an authentic manifest recorded stays as it is
                    ref.version = self._versions.get(ref.id)

    def _extend_locks(self, snapshot: Snapshot, pool: ThreadPoolExecutor) -> None:
        """Make every chunk (and the config) this snapshot needs locked for `lock_days` from now."""
        days = self.repo.target.lock_days
        if days is None:
            return
        required = self._lock_start + days * DAY  # what every chunk uploaded by this run has at least
        extend_to = float(math.ceil(required + lock_slack_days(days) * DAY))  # servers keep whole seconds
        self.repo.ensure_locked(required, extend_to)
        refs: dict[str, list[ChunkRef]] = {}
        for entry in snapshot.files:
            for ref in entry.chunks:
                refs.setdefault(ref.id, []).append(ref)
        stale = {cid: rs[0].version for cid, rs in refs.items() if self._locked.get(cid, 0.0) < required}
        self.progress.begin("extending Object Lock of reused chunks", None)
        until = datetime.fromtimestamp(extend_to, UTC)
        done = list(
            pool.map(lambda item: self.repo.target.extend_lock(chunk_key(item[0]), item[1], until), stale.items())
        )
        self.stats.locks_extended = len(done)
        for cid, rs in refs.items():
            bound = extend_to if cid in stale else self._locked[cid]
            for ref in rs:
                ref.locked_until = bound
        self.progress.end()

    def commit(self, snapshot: Snapshot) -> None:
        try:
            self.repo.save_snapshot(snapshot)
        except TargetError as exc:
            raise BackupFailed(f"could not write the manifest or index entry of snapshot {snapshot.id}: {exc}") from exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise TargetError(str(self._error))

    def _entry(
        self,
        source: Source,
        item: SourceItem,
        parent: dict[tuple[str, str], FileEntry],
        chunker: Chunker,
        pool: ThreadPoolExecutor,
    ) -> FileEntry:
        entry = FileEntry(source.name, item.path, item.type, mode=item.mode, mtime_ns=item.mtime_ns, link=item.link)
        if item.type != "file":
            return entry
        self.stats.files += 1
        self.progress.item(f"{source.name}/{item.path}")
        previous = parent.get((source.name, item.path)) if source.reuse_unchanged else None
        if (
            previous is not None
            and item.size == previous.size
            and item.mtime_ns == previous.mtime_ns
            and item.inode == previous.inode
            and all(c.id in self._versions for c in previous.chunks)
        ):
            entry.size, entry.sha256, entry.chunks = previous.size, previous.sha256, previous.chunks
            entry.inode = item.inode
            self.stats.bytes_unchanged += previous.size
            self.stats.chunks_reused += len(previous.chunks)
            self.progress.advance(previous.size)
            return entry
        assert item.opener is not None
        try:
            with item.opener() as stream:
                reader = HashingReader(stream)
                for view in chunker.chunks(reader):
                    entry.chunks.append(ChunkRef(self._chunk(view, pool), len(view)))
                    self.progress.advance(len(view))
        except (SourceError, TargetError):
            raise
        except Exception as exc:  # OSError, a client library's error mid-stream, ...
            raise SourceError(f"source {source.name!r}: reading {item.path} failed: {exc}") from exc
        entry.size = reader.size
        entry.sha256 = reader.sha256.hexdigest()
        entry.inode = item.inode
        self.stats.bytes_read += reader.size
        return entry

    def _chunk(self, view: memoryview, pool: ThreadPoolExecutor) -> str:
        chunk_id = self.repo.key.chunk_id(view)
        if chunk_id in self._known or chunk_id in self._versions:
            self.stats.chunks_reused += 1
            return chunk_id
        self._known.add(chunk_id)
        # Sealed here, straight from the chunker's buffer (which it reuses for the next chunk): the
        # sealed copy is the only one; the upload threads only send it.
        blob = self.repo.seal_chunk(chunk_id, view)
        self._slots.acquire()
        self._raise_if_failed()
        days = self.repo.target.lock_days
        # The put locks at least this long (the target adds the same slack to the clock at upload time).
        locked_until = self.clock() + (days + lock_slack_days(days)) * DAY if days is not None else 0.0
        future = pool.submit(self._upload, chunk_id, blob, locked_until, chunk_id in self._listed)
        future.add_done_callback(self._done)
        self._futures.append(future)
        return chunk_id

    def _upload(self, chunk_id: str, blob: bytearray, locked_until: float, listed: bool) -> None:
        if listed:
            version = self._listed[chunk_id]
            if self.repo.holds_chunk(chunk_id, version):
                with self._lock:
                    self.stats.chunks_reused += 1
                    self._versions[chunk_id] = version
                return  # its lock is unknown (0): `_extend_locks` extends it
            log.warning(
                "chunk %s in the repository does not authenticate (written by someone without the key?); "
                "uploading it again",
                chunk_id,
            )
        version = self.repo.put_chunk(chunk_id, blob)
        with self._lock:
            self.stats.chunks_new += 1
            self.stats.uploaded_bytes += len(blob)
            self._versions[chunk_id] = version
            self._locked[chunk_id] = locked_until

    def _done(self, future: Future[None]) -> None:
        self._slots.release()
        with contextlib.suppress(BaseException):
            error = future.exception()
            if error is not None and self._error is None:
                self._error = error
