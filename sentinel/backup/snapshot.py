"""The snapshot manifest: what was backed up (sources, files, their chunks, sizes and SHA-256s).

A snapshot becomes visible only when its manifest is written, after every chunk it names is
stored, so an interrupted run never looks complete. The manifest is sealed (AES-256-GCM bound to
repository and snapshot id) and the sealed bytes are signed with Ed25519, so its authenticity can
be checked with the repository's public key alone, without the decryption key.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def new_snapshot_id(now: float) -> str:
    """Sortable by time: `20250102T030405Z-1a2b3c4d`."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


@dataclass
class ChunkRef:
    """A chunk a file is made of. `version` is the object version the repository wrote (None on a store
    without versions); `locked_until` (epoch seconds, 0 if unknown) is a date its Object Lock lasts to."""

    id: str
    size: int
    version: str | None = None
    locked_until: float = 0.0

    def to_list(self) -> list[Any]:
        if self.version is None and not self.locked_until:
            return [self.id, self.size]
        return [self.id, self.size, self.version or "", self.locked_until]

    @classmethod
    def from_list(cls, data: list[Any]) -> ChunkRef:
        version = str(data[2]) if len(data) > 2 and data[2] else None
        return cls(str(data[0]), int(data[1]), version, float(data[3]) if len(data) > 3 else 0.0)


@dataclass
class FileEntry:
    """One restored item: a regular file (with chunks), a directory or a symlink."""

    source: str
    path: str
    type: str = "file"
    size: int = 0
    sha256: str = ""
    mode: int = 0o644
    mtime_ns: int = 0
    chunks: list[ChunkRef] = field(default_factory=list)
    link: str = ""
    inode: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "path": self.path, "type": self.type, "mode": self.mode}
        if self.type == "file":
            out.update(
                size=self.size,
                sha256=self.sha256,
                mtime_ns=self.mtime_ns,
                inode=self.inode,
                chunks=[c.to_list() for c in self.chunks],
            )
        elif self.type == "symlink":
            out["link"] = self.link
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        chunks = [ChunkRef.from_list(c) for c in data.get("chunks", [])]
        return cls(
            source=data["source"],
            path=data["path"],
            type=data.get("type", "file"),
            size=int(data.get("size", 0)),
            sha256=data.get("sha256", ""),
            mode=int(data.get("mode", 0o644)),
            mtime_ns=int(data.get("mtime_ns", 0)),
            chunks=chunks,
            link=data.get("link", ""),
            inode=int(data.get("inode", 0)),
        )


@dataclass
class SourceRecord:
    """A source as it was backed up: its name, kind and kind-specific facts (e.g. newest record time)."""

    name: str
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Snapshot:
    id: str
    plan: str
    started: float
    finished: float = 0.0
    hostname: str = ""
    scheduled_for: float | None = None
    sources: list[SourceRecord] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    uploaded_bytes: int = 0
    version: int = 1

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_ids(self) -> set[str]:
        return {c.id for f in self.files for c in f.chunks}

    def source(self, name: str) -> SourceRecord | None:
        return next((s for s in self.sources if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "id": self.id,
            "plan": self.plan,
            "started": self.started,
            "finished": self.finished,
            "hostname": self.hostname,
            "scheduled_for": self.scheduled_for,
            "uploaded_bytes": self.uploaded_bytes,
            "sources": [{"name": s.name, "kind": s.kind, "meta": s.meta} for s in self.sources],
            "files": [f.to_dict() for f in self.files],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        if data.get("version") != 1:
            raise ValueError(f"unsupported snapshot format version {data.get('version')!r}")
        return cls(
            id=data["id"],
            plan=data["plan"],
            started=float(data["started"]),
            finished=float(data["finished"]),
            hostname=data.get("hostname", ""),
            scheduled_for=data.get("scheduled_for"),
            uploaded_bytes=int(data.get("uploaded_bytes", 0)),
            sources=[SourceRecord(s["name"], s["kind"], dict(s.get("meta", {}))) for s in data["sources"]],
            files=[FileEntry.from_dict(f) for f in data["files"]],
        )


def age(snapshot: Snapshot, now: float | None = None) -> float:
    return (time.time() if now is None else now) - snapshot.finished
