"""A backup repository: sealed chunks, signed snapshot manifests and a plain config object in a `Target`.

Object names: `config` (format, repository id, key id, public signing key, chunker sizes),
`chunks/<2 hex>/<chunk id>`, `snapshots/<snapshot id>`, `locks/<name>`. Nothing secret is stored
in clear, and the backup key itself is never stored here.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature

from sentinel.backup.chunking import ChunkerParams
from sentinel.backup.crypto import AuthenticationError, associated_data, seal, unseal
from sentinel.backup.keys import BackupKey
from sentinel.backup.snapshot import Snapshot
from sentinel.backup.targets import ObjectInfo, ObjectNotFound, Target

FORMAT = "sentinel-backup"
CONFIG_KEY = "config"
MANIFEST_MAGIC = b"SNM\x01"
SIGNATURE_BYTES = 64


class RepositoryError(Exception):
    """A repository problem an operator must act on; the message says which and what to do."""


class RepositoryNotFound(RepositoryError):
    pass


class WrongKeyError(RepositoryError):
    pass


class SnapshotNotFound(RepositoryError):
    pass


class CorruptSnapshot(RepositoryError):
    pass


class ChunkError(RepositoryError):
    def __init__(self, chunk_id: str, message: str) -> None:
        super().__init__(message)
        self.chunk_id = chunk_id


class MissingChunkError(ChunkError):
    def __init__(self, chunk_id: str) -> None:
        super().__init__(chunk_id, f"chunk {chunk_id} is missing from the repository")


class CorruptChunkError(ChunkError):
    def __init__(self, chunk_id: str, why: str) -> None:
        super().__init__(chunk_id, f"chunk {chunk_id} is corrupt: {why}")


def chunk_key(chunk_id: str) -> str:
    return f"chunks/{chunk_id[:2]}/{chunk_id}"


def snapshot_key(snapshot_id: str) -> str:
    return f"snapshots/{snapshot_id}"


class Repository:
    def __init__(self, target: Target, key: BackupKey, config: dict[str, Any]) -> None:
        self.target = target
        self.key = key
        self.config = config
        self.id: str = config["id"]
        chunker = config["chunker"]
        self.chunker = ChunkerParams(int(chunker["min_size"]), int(chunker["avg_size"]), int(chunker["max_size"]))

    @classmethod
    def open(cls, target: Target, key: BackupKey, *, create: ChunkerParams | None = None) -> Repository:
        """Open the repository in `target`; with `create`, make it first if there is none (race-safe)."""
        try:
            config = orjson.loads(target.get(CONFIG_KEY))
        except ObjectNotFound:
            if create is None:
                raise RepositoryNotFound(f"no backup repository in {target.describe()} (none taken yet?)") from None
            config = {
                "format": FORMAT,
                "version": 1,
                "id": secrets.token_hex(16),
                "key_id": key.key_id,
                "public_key": key.verify_key.public_bytes_raw().hex(),
                "chunker": {"min_size": create.min_size, "avg_size": create.avg_size, "max_size": create.max_size},
                "created": datetime.now(UTC).isoformat(),
            }
            if target.put_if_absent(CONFIG_KEY, orjson.dumps(config, option=orjson.OPT_INDENT_2)) is None:
                return cls.open(target, key)
        except orjson.JSONDecodeError:
            raise RepositoryError(f"{target.describe()}: the repository config is not valid JSON") from None
        if config.get("format") != FORMAT or config.get("version") != 1:
            raise RepositoryError(f"{target.describe()} does not hold a Sentinel backup repository (format v1)")
        if config.get("key_id") != key.key_id:
            raise WrongKeyError(
                f"wrong backup key: the key file has key id {key.key_id}, but the repository in "
                f"{target.describe()} was made with key id {config.get('key_id')}; use that key file "
                "(SENTINEL_BACKUP_KEY_FILE)"
            )
        return cls(target, key, config)

    # -- chunks ----------------------------------------------------------------------------------

    def seal_chunk(self, chunk_id: str, data: bytes | memoryview) -> bytearray:
        return seal(self.key.chunk_aead, data, associated_data("chunk", self.id, chunk_id))

    def open_chunk(self, chunk_id: str, blob: bytes, *, check_id: bool = True) -> bytes:
        """Decrypt and authenticate; `check_id` also recomputes the keyed hash (restore skips it: the
        file's SHA-256 is checked over the same bytes anyway)."""
        try:
            data = unseal(self.key.chunk_aead, blob, associated_data("chunk", self.id, chunk_id))
        except AuthenticationError as exc:
            raise CorruptChunkError(chunk_id, str(exc)) from None
        if check_id and self.key.chunk_id(data) != chunk_id:
            raise CorruptChunkError(chunk_id, "content does not match its id")
        return data

    def put_chunk(self, chunk_id: str, blob: bytes | bytearray) -> None:
        self.target.put(chunk_key(chunk_id), blob)

    def get_chunk(self, chunk_id: str, *, check_id: bool = True) -> bytes:
        try:
            blob = self.target.get(chunk_key(chunk_id))
        except ObjectNotFound:
            raise MissingChunkError(chunk_id) from None
        return self.open_chunk(chunk_id, blob, check_id=check_id)

    def list_chunks(self) -> Iterator[ObjectInfo]:
        return self.target.list("chunks/")

    def chunk_sizes(self) -> dict[str, int]:
        """Every stored chunk id and its stored (sealed) size."""
        return {info.key.rsplit("/", 1)[-1]: info.size for info in self.list_chunks()}

    # -- snapshots -------------------------------------------------------------------------------

    def _signed_message(self, snapshot_id: str, sealed: bytes | bytearray) -> bytes:
        return b"\0".join((b"sentinel-backup/v1 manifest", self.id.encode(), snapshot_id.encode(), sealed))

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Write the manifest: the moment the snapshot becomes complete and visible."""
        plaintext = orjson.dumps(snapshot.to_dict())
        sealed = seal(self.key.manifest_aead, plaintext, associated_data("manifest", self.id, snapshot.id))
        signature = self.key.signing_key.sign(self._signed_message(snapshot.id, sealed))
        self.target.put(snapshot_key(snapshot.id), MANIFEST_MAGIC + signature + sealed)

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        try:
            blob = self.target.get(snapshot_key(snapshot_id))
        except ObjectNotFound:
            raise SnapshotNotFound(f"no snapshot {snapshot_id} in {self.target.describe()}") from None
        head = len(MANIFEST_MAGIC) + SIGNATURE_BYTES
        if len(blob) < head or not blob.startswith(MANIFEST_MAGIC):
            raise CorruptSnapshot(f"snapshot {snapshot_id}: not a signed manifest")
        signature, sealed = blob[len(MANIFEST_MAGIC) : head], blob[head:]
        try:
            self.key.verify_key.verify(signature, self._signed_message(snapshot_id, sealed))
        except InvalidSignature:
            raise CorruptSnapshot(f"snapshot {snapshot_id}: the manifest signature does not verify") from None
        try:
            plaintext = unseal(self.key.manifest_aead, sealed, associated_data("manifest", self.id, snapshot_id))
            return Snapshot.from_dict(orjson.loads(plaintext))
        except (AuthenticationError, ValueError, KeyError) as exc:
            raise CorruptSnapshot(f"snapshot {snapshot_id}: {exc}") from None

    def snapshot_ids(self) -> list[str]:
        return sorted(info.key.rsplit("/", 1)[-1] for info in self.target.list("snapshots/"))

    def snapshots(self, plan: str | None = None) -> list[Snapshot]:
        """Every complete snapshot (of `plan`), oldest first."""
        loaded = sorted((self.load_snapshot(i) for i in self.snapshot_ids()), key=lambda s: (s.started, s.id))
        return [s for s in loaded if plan is None or s.plan == plan]

    def resolve(self, ref: str, plan: str | None = None) -> Snapshot:
        """A snapshot by id, unique id prefix, or `latest` (of `plan` if given)."""
        if ref == "latest":
            found = self.snapshots(plan)
            if not found:
                raise SnapshotNotFound(f"no snapshot{f' of plan {plan}' if plan else ''} in {self.target.describe()}")
            return found[-1]
        matches = [i for i in self.snapshot_ids() if i.startswith(ref)]
        if len(matches) != 1:
            what = "no snapshot" if not matches else f"{len(matches)} snapshots"
            raise SnapshotNotFound(f"{what} match {ref!r} in {self.target.describe()}")
        return self.load_snapshot(matches[0])

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.target.delete(snapshot_key(snapshot_id))
