"""The snapshot index: a signed, append-only record of which snapshots the repository holds.

Each backup (and each prune) writes a new entry `index/<sequence, 20 digits>` holding the whole set
of live snapshot ids (with their plans) and the repository's signed config, signed with the
repository's Ed25519 key. Entries are never rewritten; under Object Lock they cannot be removed while
locked, and a newer entry is written at least at every backup. So whoever holds only the bucket's
credentials cannot forge an entry, and a snapshot they delete or hide is named by the newest entry:
`list`, `restore latest`, `verify` and drills report it instead of quietly showing one snapshot fewer.
(Restic and Kopia keep the equivalent in their signed/encrypted index and maintenance logs.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sentinel.backup.targets import History, ObjectNotFound, Target

log = logging.getLogger("sentinel.backup")

PREFIX = "index/"
MAGIC = b"SNI\x01"
SIGNATURE_BYTES = 64
_DIGITS = 20
MAX_SEQUENCE = 2**53
"""Far beyond any real history (one entry a second for 285 million years), far below what JSON
numbers, orjson and SQLite hold exactly: a key above it was not written by Sentinel."""


@dataclass
class IndexEntry:
    sequence: int
    snapshots: dict[str, str]
    """Every live snapshot id and its plan."""
    started: dict[str, float]
    """When each of them started (epoch seconds): orders them even within one second."""
    config: dict[str, Any]
    """The repository config (itself signed) when this entry was written: what `recover-config` restores."""
    written: float = 0.0
    lost: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Snapshots an operator acknowledged as permanently lost (`backup forget --lost`): id → plan, reason,
    when, and what was wrong. Carried into every later entry, so an acknowledgment is never undone."""


@dataclass
class IndexReading:
    newest: IndexEntry | None
    occupied: set[int] = field(default_factory=set)
    """Every sequence number with a key under `index/`, authentic or not (the next entry goes at the
    first free number above the newest authentic entry)."""
    problems: list[str] = field(default_factory=list)

    def next_sequence(self) -> int:
        sequence = (self.newest.sequence if self.newest else -1) + 1
        while sequence in self.occupied:
            sequence += 1
        if sequence > MAX_SEQUENCE:
            raise ValueError(f"the snapshot index would pass sequence number {MAX_SEQUENCE}")
        return sequence


def entry_key(sequence: int) -> str:
    return f"{PREFIX}{sequence:0{_DIGITS}d}"


def _message(repository_id: str, sequence: int, body: bytes) -> bytes:
    """What is signed: the repository id and the sequence number bind an entry to its place."""
    return b"\0".join((b"sentinel-backup/v2 index", repository_id.encode(), str(sequence).encode(), body))


def _message_v1(sequence: int, body: bytes) -> bytes:
    """What entries written before the repository id was signed carry (read, never written)."""
    return b"\0".join((b"sentinel-backup/v1 index", str(sequence).encode(), body))


def encode(entry: IndexEntry, signing_key: Ed25519PrivateKey) -> bytes:
    if not 0 <= entry.sequence <= MAX_SEQUENCE:
        raise ValueError(f"index sequence number {entry.sequence} out of range")
    body = orjson.dumps(
        {
            "sequence": entry.sequence,
            "snapshots": entry.snapshots,
            "started": entry.started,
            "config": entry.config,
            "written": entry.written,
            **({"lost": entry.lost} if entry.lost else {}),
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return MAGIC + signing_key.sign(_message(str(entry.config["id"]), entry.sequence, body)) + body


def decode(sequence: int, blob: bytes, verify_key: Ed25519PublicKey, repository_id: str | None) -> IndexEntry:
    """The entry, if `blob` is one signed by `verify_key` for `sequence` in the repository
    `repository_id` (None: any repository, for `recover-config`); ValueError otherwise.

    Entries are signed over the repository id, so one copied from another repository that shares the
    backup key does not verify. Older entries (signed without it) count only if the config they carry
    names this repository."""
    head = len(MAGIC) + SIGNATURE_BYTES
    if len(blob) < head or not blob.startswith(MAGIC):
        raise ValueError("not a signed index entry")
    body, signature = blob[head:], blob[len(MAGIC) : head]
    raw = orjson.loads(body)
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict):
        raise ValueError("not an index entry")
    claimed = str(raw["config"].get("id"))
    if repository_id is not None and claimed != repository_id:
        raise ValueError(f"an entry of another repository ({claimed})")
    try:
        verify_key.verify(signature, _message(claimed, sequence, body))
    except InvalidSignature:
        try:
            verify_key.verify(signature, _message_v1(sequence, body))
        except InvalidSignature:
            raise ValueError("the signature does not verify") from None
    if raw.get("sequence") != sequence:
        raise ValueError("filed under another sequence number")
    return IndexEntry(
        sequence,
        {str(k): str(v) for k, v in raw["snapshots"].items()},
        {str(k): float(v) for k, v in raw["started"].items()},
        raw["config"],
        raw["written"],
        {str(k): dict(v) for k, v in raw.get("lost", {}).items()},
    )


def _sequence(key: str) -> int | None:
    digits = key[len(PREFIX) :]
    if len(digits) != _DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    sequence = int(digits)
    return sequence if sequence <= MAX_SEQUENCE else None


def read(target: Target, verify_key: Ed25519PublicKey, repository_id: str | None) -> IndexReading:
    """The newest authentic entry of `repository_id`: the highest sequence with a version that
    verifies, each key's versions tried oldest first (what was written first is what the repository
    wrote)."""
    reading = IndexReading(None)
    for entry in entries(target, verify_key, repository_id, reading):
        reading.newest = entry
        break
    return reading


def entries(
    target: Target, verify_key: Ed25519PublicKey, repository_id: str | None, reading: IndexReading | None = None
) -> Iterator[IndexEntry]:
    """Every authentic entry (of `repository_id`, or of any repository the key signed for), newest
    first; what does not verify or was written over goes to `reading.problems`."""
    reading = reading or IndexReading(None)
    histories: dict[int, History] = {}
    for key, history in target.histories(PREFIX).items():
        sequence = _sequence(key)
        if sequence is None:
            reading.problems.append(f"{key} is not an index entry Sentinel writes (put there by someone else?)")
        else:
            histories[sequence] = history
    reading.occupied = set(histories)
    for sequence in sorted(histories, reverse=True):
        history = histories[sequence]
        found: IndexEntry | None = None
        for version in history.versions:
            try:
                found = decode(sequence, target.get(history.key, version.id), verify_key, repository_id)
            except ObjectNotFound:
                continue
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
                reading.problems.append(
                    f"index entry {history.key} (version {version.id}) does not authenticate, written by "
                    f"someone without the key? ({exc})"
                )
                continue
            break
        if found is not None:
            if history.rewritten:
                reading.problems.append(
                    f"index entry {history.key} was written over or deleted by someone without the key "
                    "(its first version is used)"
                )
            yield found
