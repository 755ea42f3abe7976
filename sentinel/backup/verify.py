"""Checking a snapshot without restoring it: every chunk present (and with --read-data, authentic).

Without reading data: each chunk the manifest names is listed in the target at exactly the sealed
size its plaintext size implies (catches missing and truncated chunks cheaply). With read-data:
each chunk is downloaded, decrypted (AES-GCM authenticates it against its id and repository) and
its keyed hash recomputed, and each file's SHA-256 is recomputed over its chunks.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sentinel.backup.crypto import OVERHEAD
from sentinel.backup.progress import Progress
from sentinel.backup.repository import Repository
from sentinel.backup.snapshot import Snapshot


@dataclass
class Problem:
    chunk_id: str | None
    files: list[str]
    what: str

    def describe(self) -> str:
        names = ", ".join(self.files[:3]) + (f" and {len(self.files) - 3} more" if len(self.files) > 3 else "")
        subject = f"chunk {self.chunk_id}" if self.chunk_id else "file"
        return f"{subject} ({names}): {self.what}"


@dataclass
class VerifyReport:
    snapshot: str
    chunks_checked: int = 0
    files_checked: int = 0
    read_data: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_snapshot(
    repo: Repository,
    snapshot: Snapshot,
    *,
    read_data: bool = False,
    concurrency: int = 8,
    progress: Progress | None = None,
) -> VerifyReport:
    progress = progress or Progress()
    report = VerifyReport(snapshot.id, read_data=read_data)
    users: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    recorded: dict[str, str | None] = {}
    for entry in snapshot.files:
        for ref in entry.chunks:
            users.setdefault(ref.id, []).append(f"{entry.source}/{entry.path}")
            sizes[ref.id] = ref.size
            recorded[ref.id] = ref.version
    progress.begin("listing chunks", None)
    stored: dict[str, int] = {}
    for chunk_id, history in repo.chunk_histories().items():
        # The size of the version the manifest records (what restore reads), else of the first one.
        mine = [v for v in history.versions if recorded.get(chunk_id) and v.id == recorded[chunk_id]]
        stored[chunk_id] = (mine or history.versions)[0].size
    progress.end()
    bad: set[str] = set()
    for chunk_id, size in sizes.items():
        if chunk_id not in stored:
            report.problems.append(Problem(chunk_id, users[chunk_id], "missing"))
            bad.add(chunk_id)
        elif stored[chunk_id] != size + OVERHEAD:
            report.problems.append(
                Problem(chunk_id, users[chunk_id], f"stored size {stored[chunk_id]} != expected {size + OVERHEAD}")
            )
            bad.add(chunk_id)
    report.chunks_checked = len(sizes)
    if not read_data:
        report.files_checked = sum(1 for f in snapshot.files if f.type == "file")
        return report

    # One pass per file: each chunk is fetched (prefetched in order), authenticated against its id,
    # and fed to the file's SHA-256. A bad chunk is reported once, with every file that uses it.
    from sentinel.backup.restore import RestoreError, Restorer

    restorer = Restorer(repo, concurrency=concurrency)
    files = [f for f in snapshot.files if f.type == "file" and not any(ref.id in bad for ref in f.chunks)]
    progress.begin("reading chunks", sum(f.size for f in files))
    with ThreadPoolExecutor(concurrency, thread_name_prefix="verify") as pool:
        for entry in files:
            if any(ref.id in bad for ref in entry.chunks):
                continue
            progress.item(f"{entry.source}/{entry.path}")
            digest = hashlib.sha256()
            try:
                for data in restorer.chunks(entry, pool, check_ids=True):
                    digest.update(data)
                    progress.advance(len(data))
            except RestoreError as exc:
                if exc.chunk_id is not None:
                    bad.add(exc.chunk_id)
                    what = str(exc.__cause__ or exc).split(": ", 1)[-1]
                    report.problems.append(Problem(exc.chunk_id, users[exc.chunk_id], what))
                else:
                    report.problems.append(Problem(None, [f"{entry.source}/{entry.path}"], str(exc)))
                continue
            if digest.hexdigest() != entry.sha256:
                report.problems.append(Problem(None, [f"{entry.source}/{entry.path}"], "SHA-256 does not match"))
            report.files_checked += 1
    progress.end()
    return report
