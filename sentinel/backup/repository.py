"""A backup repository: sealed chunks, signed snapshot manifests, a signed snapshot index and a signed
config object in a `Target`.

Object names: `config` (format, repository id, key id, public signing key, chunker sizes, signature),
`chunks/<2 hex>/<chunk id>`, `snapshots/<snapshot id>`, `index/<sequence>`, `locks/<name>`. Nothing
secret is stored in clear, and the backup key itself is never stored here.

Whoever holds the bucket's credentials but not the backup key can add versions and delete markers
(Object Lock allows both) but not forge anything: so every read takes the version the repository
wrote (the version id a manifest records, else the oldest version that authenticates), listings
include keys hidden by a delete marker, and the signed index names snapshots that went missing.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import orjson
from cryptography.exceptions import InvalidSignature

from sentinel.backup import index
from sentinel.backup.chunking import ChunkerParams
from sentinel.backup.crypto import AuthenticationError, associated_data, seal, unseal
from sentinel.backup.keys import BackupKey
from sentinel.backup.snapshot import ChunkRef, Snapshot
from sentinel.backup.state import PlanHealth
from sentinel.backup.targets import History, ObjectNotFound, Target, TargetError

log = logging.getLogger("sentinel.backup")
T = TypeVar("T")

FORMAT = "sentinel-backup"
CONFIG_KEY = "config"
MANIFEST_MAGIC = b"SNM\x01"
SIGNATURE_BYTES = 64
_UNSIGNED_CHUNKS_TRIED = 8
SNAPSHOT_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")
CHUNK_ID = re.compile(r"[0-9a-f]{64}")


class RepositoryError(Exception):
    """A repository problem an operator must act on; the message says which and what to do."""


class RepositoryNotFound(RepositoryError):
    pass


class WrongKeyError(RepositoryError):
    pass


class SnapshotNotFound(RepositoryError):
    pass


class SnapshotUnavailable(SnapshotNotFound):
    """The snapshot asked for (or the newest one, for `latest`) is missing or damaged: never fall back silently."""


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


def recovery_hint(target: Target) -> str:
    return (
        "to rebuild it from the signed snapshot index run `sentinel backup recover-config --plan <plan>`; "
        f"to start afresh instead, point the target at a new prefix (never reuse {target.describe()})"
    )


def _config_message(config: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in config.items() if k != "signature"}
    return b"sentinel-backup/v1 config\0" + orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)


def sign_config(config: dict[str, Any], key: BackupKey) -> dict[str, Any]:
    return {**config, "signature": key.signing_key.sign(_config_message(config)).hex()}


def config_authentic(config: dict[str, Any], key: BackupKey) -> bool:
    """Signed by this key; a config written before signatures (v1 without one) counts if its public key is ours."""
    if config.get("public_key") != key.verify_key.public_bytes_raw().hex():
        return False
    signature = config.get("signature")
    if signature is None:
        return True
    try:
        key.verify_key.verify(bytes.fromhex(str(signature)), _config_message(config))
    except (InvalidSignature, ValueError):
        return False
    return True


class IndexSeen(Protocol):
    """Where a host remembers the newest index entry it saw per repository, and what each look at the
    repository found per plan, for /metrics (`RunLog` is one)."""

    def index_seen(self, repository: str) -> int: ...

    def saw_index(self, repository: str, sequence: int) -> None: ...

    def saw_health(self, health: Sequence[PlanHealth]) -> None: ...


@dataclass
class Catalog:
    """What the repository holds, as far as the key can tell.

    `snapshots`: authentic ones, oldest first. `damaged`: present, but no version authenticates (id →
    why). `missing`: named by the signed index but absent (id → plan). `notes`: tampering that was seen
    and survived (a delete marker or a newer version over what the repository wrote).
    """

    snapshots: list[Snapshot] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    indexed: bool = False
    started: dict[str, float] = field(default_factory=dict)
    """When each snapshot the index names started (to order damaged and missing ones)."""
    plans: dict[str, str] = field(default_factory=dict)
    """The plan of each snapshot the index names."""
    rolled_back: str | None = None
    """Set when the index's newest entry is older than one this host already saw."""
    lost: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Missing or damaged snapshots an operator acknowledged as lost (`backup forget --lost`): not failures."""

    def acknowledged(self) -> list[str]:
        """Each acknowledged loss, in words: which snapshot, when, by whom, why."""
        out = []
        for snapshot_id, lost in sorted(self.lost.items()):
            at = lost.get("at")
            stamp = datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "?"
            by = f" by {lost['by']}" if lost.get("by") else ""
            out.append(
                f"snapshot {snapshot_id} (plan {lost.get('plan') or '?'}, {lost.get('was', 'missing')}) "
                f"was acknowledged lost on {stamp}{by}: {lost.get('reason', '')}"
            )
        return out

    def health(self, plans: Sequence[str] = ()) -> list[PlanHealth]:
        """Per plan (those named here, and every plan this catalog saw), what is missing, damaged or lost.
        A damaged manifest the index does not name belongs to no known plan: it counts for each of them."""
        named = {**self.missing, **{i: str(v.get("plan", "")) for i, v in self.lost.items()}}
        names = set(plans) | {s.plan for s in self.snapshots} | {p for p in named.values() if p}
        out = []
        for plan in sorted(names):
            out.append(
                PlanHealth(
                    plan,
                    missing=sum(1 for p in self.missing.values() if p == plan),
                    damaged=sum(1 for i in self.damaged if self.plans.get(i, plan) == plan),
                    cut_back=self.rolled_back is not None,
                    lost=sum(1 for v in self.lost.values() if v.get("plan") == plan),
                )
            )
        return out

    @property
    def intact(self) -> bool:
        return not self.damaged and not self.missing and self.rolled_back is None

    def problems(self) -> list[str]:
        out = [self.rolled_back] if self.rolled_back else []
        out += [f"snapshot {i} is damaged: {why}" for i, why in sorted(self.damaged.items())]
        out += [
            f"snapshot {i} (plan {plan}) is missing: the signed snapshot index names it, but the repository "
            "no longer holds it (deleted by someone without the key, or lost)"
            for i, plan in sorted(self.missing.items())
        ]
        return out


class Repository:
    def __init__(
        self, target: Target, key: BackupKey, config: dict[str, Any], *, config_version: str | None = None
    ) -> None:
        self.target = target
        self.key = key
        self.config = config
        self.config_version = config_version
        self.seen: IndexSeen | None = None
        """Set by the caller to notice an index cut back below what this host saw (see `catalog`)."""
        self.id: str = config["id"]
        chunker = config["chunker"]
        self.chunker = ChunkerParams(int(chunker["min_size"]), int(chunker["avg_size"]), int(chunker["max_size"]))

    @classmethod
    def open(cls, target: Target, key: BackupKey, *, create: ChunkerParams | None = None) -> Repository:
        """Open the repository in `target`; with `create`, make it first if there is none (race-safe).

        A config that vanished while the repository holds data, or that no longer authenticates, is an
        error with a recovery command: a new repository on top of old chunks would make them unreadable."""
        history = target.histories(CONFIG_KEY).get(CONFIG_KEY)
        if history is None:
            if cls._holds_data(target):
                raise RepositoryError(
                    f"the repository config in {target.describe()} is missing although the repository holds "
                    f"snapshots or chunks (deleted by someone without the key?); {recovery_hint(target)}"
                )
            if create is None:
                raise RepositoryNotFound(f"no backup repository in {target.describe()} (none taken yet?)")
            config = sign_config(
                {
                    "format": FORMAT,
                    "version": 1,
                    "id": secrets.token_hex(16),
                    "key_id": key.key_id,
                    "public_key": key.verify_key.public_bytes_raw().hex(),
                    "chunker": {"min_size": create.min_size, "avg_size": create.avg_size, "max_size": create.max_size},
                    "created": datetime.now(UTC).isoformat(),
                },
                key,
            )
            target.put_if_absent(CONFIG_KEY, orjson.dumps(config, option=orjson.OPT_INDENT_2))
            return cls.open(target, key)
        first: dict[str, Any] | None = None
        candidates: list[tuple[str | None, dict[str, Any]]] = []
        for version in history.versions:  # oldest first: what was written first is what we wrote
            try:
                config = orjson.loads(target.get(CONFIG_KEY, version.id))
            except ObjectNotFound:
                continue
            except orjson.JSONDecodeError:
                continue
            if not isinstance(config, dict):
                continue
            first = first or config
            if config.get("format") != FORMAT or config.get("version") != 1:
                continue
            if config_authentic(config, key):
                candidates.append((version.id, config))
        # A signed config first (an unsigned one is from before configs were signed); either counts
        # only if the repository's own signed data vouches for its id: a config signed for another
        # repository that shares the key (copied here) names an id nothing here belongs to.
        candidates.sort(key=lambda c: c[1].get("signature") is None)
        for version_id, config in candidates:
            if cls._vouched(target, key, config):
                if history.rewritten:
                    log.warning(
                        "the repository config in %s was written over or deleted by someone without the key; "
                        "using the version the repository wrote",
                        target.describe(),
                    )
                return cls(target, key, config, config_version=version_id)
        if first is not None and first.get("format") == FORMAT and first.get("key_id") != key.key_id:
            raise WrongKeyError(
                f"wrong backup key: the key file has key id {key.key_id}, but the repository in "
                f"{target.describe()} was made with key id {first.get('key_id')}; use that key file "
                "(SENTINEL_BACKUP_KEY_FILE)"
            )
        if first is None or first.get("format") != FORMAT:
            raise RepositoryError(f"{target.describe()} does not hold a Sentinel backup repository (format v1)")
        raise RepositoryError(
            f"the repository config in {target.describe()} does not authenticate with this key "
            f"(tampered with by someone without the key?); {recovery_hint(target)}"
        )

    @classmethod
    def _vouched(cls, target: Target, key: BackupKey, config: dict[str, Any]) -> bool:
        """A config counts only if the repository's signed data names the same repository: an index
        entry signed for its id, else at least one manifest (or, with no manifest yet, a chunk) that
        authenticates under it, or no data at all. Otherwise anyone could put an unsigned config with a
        new id (or a signed one from another repository) there, and every old snapshot would quietly
        stop counting."""
        newest = index.read(target, key.verify_key, str(config.get("id"))).newest
        return newest is not None or cls._data_vouches(target, key, config)

    @classmethod
    def _data_vouches(cls, target: Target, key: BackupKey, config: dict[str, Any]) -> bool:
        """At least one manifest (or, with no manifest, a chunk) authenticates under the id of `config`,
        or the repository holds no data."""
        candidate = cls(target, key, config)
        manifests = candidate._manifests()
        for snapshot_id, history in sorted(manifests.items(), reverse=True):
            try:
                candidate.load_snapshot(snapshot_id, history)
            except (CorruptSnapshot, SnapshotNotFound):
                continue
            return True
        if manifests:
            return False
        chunks = list(itertools.islice(candidate.chunk_histories().items(), _UNSIGNED_CHUNKS_TRIED))
        return not chunks or any(candidate.holds_chunk(cid, h.versions[0].id) for cid, h in chunks)

    @staticmethod
    def _holds_data(target: Target) -> bool:
        return any(target.histories(prefix) for prefix in ("snapshots/", index.PREFIX)) or any(
            True for _ in target.list("chunks/")
        )

    @classmethod
    def recover_config(cls, target: Target, key: BackupKey) -> Repository:
        """Write the config back from the newest signed index entry (after it was deleted or replaced)
        whose repository the manifests here confirm: an entry copied from another repository that
        shares the backup key names that repository's id, under which nothing here authenticates."""
        found = False
        refused: set[str] = set()
        for entry in index.entries(target, key.verify_key, None):
            found = True
            config = entry.config
            if str(config.get("id")) in refused:
                continue
            if not config_authentic(config, key) or config.get("signature") is None:
                continue
            if not cls._data_vouches(target, key, config):
                refused.add(str(config.get("id")))
                log.warning(
                    "index entry %d in %s names repository %s, which nothing stored there belongs to (copied "
                    "from another repository?); not recovering from it",
                    entry.sequence,
                    target.describe(),
                    config.get("id"),
                )
                continue
            target.put(CONFIG_KEY, orjson.dumps(config, option=orjson.OPT_INDENT_2))
            return cls.open(target, key)
        if not found:
            raise RepositoryError(
                f"no signed snapshot index in {target.describe()} to recover the config from; "
                "point the target at a new prefix and take a fresh backup"
            )
        raise RepositoryError(
            f"no signed index entry in {target.describe()} carries a config that the snapshots stored there "
            "authenticate under"
        )

    def _first_authentic(self, key: str, history: History | None, check: Callable[[bytes], T], tried: str | None) -> T:
        """The first version of `key`, oldest first, that passes `check` (which raises if it does not)."""
        error: Exception | None = None
        for version in history.versions if history else []:
            if tried is not None and version.id == tried:
                continue
            try:
                return check(self.target.get(key, version.id))
            except ObjectNotFound as exc:
                error = error or exc
            except RepositoryError as exc:
                error = error or exc
        if error is not None:
            raise error
        raise ObjectNotFound(key)

    def ensure_locked(self, until: float, extend_to: float) -> None:
        """Extend the config's Object Lock to `extend_to` if it ends before `until` (every restore needs it)."""
        if self.target.lock_days is None:
            return
        current = self.target.lock_until(CONFIG_KEY, self.config_version)
        if current is None or current.timestamp() < until:
            self.target.extend_lock(CONFIG_KEY, self.config_version, datetime.fromtimestamp(extend_to, UTC))

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

    def put_chunk(self, chunk_id: str, blob: bytes | bytearray) -> str | None:
        """Store a sealed chunk; its version id (None on a store without versions)."""
        return self.target.put(chunk_key(chunk_id), blob)

    def holds_chunk(self, chunk_id: str, version: str | None) -> bool:
        """Whether `version` of the chunk is there and opens to exactly that chunk (its id recomputed)."""
        try:
            self.open_chunk(chunk_id, self.target.get(chunk_key(chunk_id), version))
        except (ObjectNotFound, CorruptChunkError):
            return False
        return True

    def get_chunk(self, ref: ChunkRef | str, *, check_id: bool = True) -> bytes:
        """The chunk's plaintext: the version the manifest names, else the current one; if that is gone or
        does not authenticate (written over, hidden), the oldest version that does."""
        chunk_id, version = (ref, None) if isinstance(ref, str) else (ref.id, ref.version)
        key = chunk_key(chunk_id)

        def check(blob: bytes) -> bytes:
            return self.open_chunk(chunk_id, blob, check_id=check_id)

        try:
            return check(self.target.get(key, version))
        except (ObjectNotFound, CorruptChunkError) as exc:
            first = exc
        try:
            return self._first_authentic(key, self.target.histories(key).get(key), check, version)
        except (ObjectNotFound, CorruptChunkError):
            if isinstance(first, ObjectNotFound):
                raise MissingChunkError(chunk_id) from None
            raise first from None

    def chunk_histories(self) -> dict[str, History]:
        """Every stored chunk id with its versions (oldest first): keys exactly `chunks/<id[:2]>/<id>`
        with a well-formed id; any other key is logged and ignored (never read, reused or deleted)."""
        out = {}
        for key, history in self.target.histories("chunks/").items():
            chunk_id = key.rsplit("/", 1)[-1]
            if CHUNK_ID.fullmatch(chunk_id) and key == chunk_key(chunk_id):
                out[chunk_id] = history
            else:
                log.warning("ignoring %s: not a chunk Sentinel writes (put there by someone else?)", key)
        return out

    def chunk_versions(self) -> dict[str, tuple[int, str | None]]:
        """Every stored chunk id with the stored (sealed) size and id of its first version."""
        out = {}
        for chunk_id, history in self.chunk_histories().items():
            first = history.versions[0]
            out[chunk_id] = (first.size, first.id)
        return out

    def chunk_sizes(self) -> dict[str, int]:
        """Every stored chunk id and its stored (sealed) size, as first written."""
        return {chunk_id: size for chunk_id, (size, _) in self.chunk_versions().items()}

    # -- snapshots -------------------------------------------------------------------------------

    def _signed_message(self, snapshot_id: str, sealed: bytes | bytearray) -> bytes:
        return b"\0".join((b"sentinel-backup/v1 manifest", self.id.encode(), snapshot_id.encode(), sealed))

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Write the manifest (the moment the snapshot becomes complete and visible), then add it to the index."""
        plaintext = orjson.dumps(snapshot.to_dict())
        sealed = seal(self.key.manifest_aead, plaintext, associated_data("manifest", self.id, snapshot.id))
        signature = self.key.signing_key.sign(self._signed_message(snapshot.id, sealed))
        self.target.put(snapshot_key(snapshot.id), MANIFEST_MAGIC + signature + sealed)
        self.update_index(add=[snapshot])

    def _parse_manifest(self, snapshot_id: str, blob: bytes) -> Snapshot:
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
            snapshot = Snapshot.from_dict(orjson.loads(plaintext))
        except (AuthenticationError, ValueError, KeyError) as exc:
            raise CorruptSnapshot(f"snapshot {snapshot_id}: {exc}") from None
        if snapshot.id != snapshot_id:
            raise CorruptSnapshot(f"snapshot {snapshot_id}: the manifest is that of {snapshot.id}")
        return snapshot

    def load_snapshot(self, snapshot_id: str, history: History | None = None) -> Snapshot:
        key = snapshot_key(snapshot_id)
        if history is None:
            history = self.target.histories(key).get(key)
        if history is None:
            raise SnapshotNotFound(f"no snapshot {snapshot_id} in {self.target.describe()}")
        try:
            return self._first_authentic(key, history, lambda blob: self._parse_manifest(snapshot_id, blob), None)
        except ObjectNotFound:
            raise SnapshotNotFound(f"no snapshot {snapshot_id} in {self.target.describe()}") from None

    def _manifests(self, anomalies: list[str] | None = None) -> dict[str, History]:
        """Every `snapshots/<id>` with a well-formed id; any other key there goes to `anomalies` (a key
        like `snapshots/zz/<id>` must not stand in for the genuine manifest of that id)."""
        out = {}
        for key, history in self.target.histories("snapshots/").items():
            snapshot_id = key.removeprefix("snapshots/")
            if SNAPSHOT_ID.fullmatch(snapshot_id):
                out[snapshot_id] = history
            elif anomalies is not None:
                anomalies.append(f"ignoring {key}: not a manifest Sentinel writes (put there by someone else?)")
        return out

    def snapshot_ids(self) -> list[str]:
        return sorted(self._manifests())

    def read_index(self) -> index.IndexReading:
        return index.read(self.target, self.key.verify_key, self.id)

    def _remember(self, sequence: int) -> None:
        if self.seen is None or sequence < 0:
            return
        try:
            self.seen.saw_index(self.id, sequence)
        except Exception as exc:  # a read-only data directory must not stop a restore
            # Without it this host cannot notice the index being cut back: say so loudly.
            log.error(
                "could not remember snapshot index entry %d (cut-back detection on this host is blind): %s",
                sequence,
                exc,
            )

    def _rolled_back(self, reading: index.IndexReading) -> str | None:
        if self.seen is None:
            return None
        newest = reading.newest.sequence if reading.newest else -1
        try:
            seen = self.seen.index_seen(self.id)
        except Exception as exc:
            log.warning("could not read the snapshot index entry last seen: %s", exc)
            return None
        if newest >= seen:
            self._remember(newest)
            return None
        return (
            f"the signed snapshot index was cut back: this host saw entry {seen}, the newest in "
            f"{self.target.describe()} is {newest} (entries and the snapshots they name deleted by someone "
            "without the key?); snapshots taken since may be missing"
        )

    def catalog(self, plan: str | None = None) -> Catalog:
        """Every snapshot (of `plan`), checked against the signed index. One bad manifest affects only itself."""
        anomalies: list[str] = []
        manifests = self._manifests(anomalies)
        reading = self.read_index()
        named = reading.newest.snapshots if reading.newest else {}
        lost = reading.newest.lost if reading.newest else {}
        catalog = Catalog(
            indexed=reading.newest is not None,
            notes=[*reading.problems, *anomalies],
            started=dict(reading.newest.started) if reading.newest else {},
            plans=dict(named),
            rolled_back=self._rolled_back(reading),
            lost={i: v for i, v in lost.items() if plan is None or v.get("plan") == plan},
        )
        loaded = []
        for snapshot_id, history in sorted(manifests.items()):
            if snapshot_id in lost or (plan is not None and named.get(snapshot_id, plan) != plan):
                continue
            try:
                snapshot = self.load_snapshot(snapshot_id, history)
            except (CorruptSnapshot, SnapshotNotFound) as exc:
                why = str(exc).removeprefix(f"snapshot {snapshot_id}: ")
                if catalog.indexed and snapshot_id not in named:
                    # Every snapshot we write enters the index; an unnamed object that does not even
                    # authenticate was put there by someone else, and must not block `latest`.
                    catalog.notes.append(
                        f"ignoring {snapshot_key(snapshot_id)}: not a snapshot of this repository ({why})"
                    )
                else:
                    catalog.damaged[snapshot_id] = why
                continue
            if plan is not None and snapshot.plan != plan:
                continue
            if history.hidden:
                catalog.notes.append(
                    f"snapshot {snapshot_id} was deleted by someone without the key (a delete marker hides it); "
                    "its locked manifest is still read"
                )
            elif history.rewritten:
                catalog.notes.append(
                    f"snapshot {snapshot_id}'s manifest was written over by someone without the key; "
                    "the version the repository wrote is read"
                )
            loaded.append(snapshot)
        catalog.snapshots = sorted(loaded, key=lambda s: (s.started, s.id))
        catalog.missing = {i: p for i, p in named.items() if i not in manifests and (plan is None or p == plan)}
        self._report_health(catalog, plan)
        return catalog

    def _report_health(self, catalog: Catalog, plan: str | None) -> None:
        if self.seen is None:
            return
        try:
            self.seen.saw_health(catalog.health([plan] if plan else ()))
        except Exception as exc:  # a read-only data directory must not stop a restore
            log.warning("could not record the repository's health for /metrics: %s", exc)

    def snapshots(self, plan: str | None = None) -> list[Snapshot]:
        """Every authentic snapshot (of `plan`), oldest first; damaged or missing ones are left out
        (`catalog` names them)."""
        catalog = self.catalog(plan)
        for problem in catalog.problems():
            log.warning("%s", problem)
        return catalog.snapshots

    def resolve(self, ref: str, plan: str | None = None) -> Snapshot:
        """A snapshot by id, unique id prefix, or `latest` (of `plan` if given). `latest` is refused, not
        rolled back to an older one, when the newest snapshot is missing or damaged."""
        if ref == "latest":
            catalog = self.catalog(plan)
            bad = [*catalog.damaged, *catalog.missing]
            if not catalog.snapshots and not bad:
                raise SnapshotNotFound(f"no snapshot{f' of plan {plan}' if plan else ''} in {self.target.describe()}")
            newest = catalog.snapshots[-1] if catalog.snapshots else None
            # Ordered by start time as the index records it; one it does not know counts as newer
            # than any intact snapshot from the same second (its id starts with that second).
            if catalog.rolled_back:
                raise SnapshotUnavailable(f"the latest snapshot cannot be told: {catalog.rolled_back}")
            newer = [
                i
                for i in bad
                if newest is None
                or (
                    catalog.started[i] > newest.started
                    if i in catalog.started
                    else i.split("-")[0] >= newest.id.split("-")[0]
                )
            ]
            if newer:
                problem = next(p for p in catalog.problems() if p.startswith(f"snapshot {max(newer)} "))
                older = f"; the newest intact one is {newest.id}: name it to use it" if newest else ""
                raise SnapshotUnavailable(f"the latest snapshot is not usable: {problem}{older}")
            assert newest is not None
            return newest
        manifests = self._manifests()
        missing = self.catalog(plan).missing if not any(i.startswith(ref) for i in manifests) else {}
        matches = [i for i in manifests if i.startswith(ref)]
        if not matches and [i for i in missing if i.startswith(ref)]:
            gone = next(i for i in missing if i.startswith(ref))
            raise SnapshotUnavailable(
                f"snapshot {gone} is missing: the signed snapshot index names it, but {self.target.describe()} "
                "no longer holds it"
            )
        if len(matches) != 1:
            what = "no snapshot" if not matches else f"{len(matches)} snapshots"
            raise SnapshotNotFound(f"{what} match {ref!r} in {self.target.describe()}")
        return self.load_snapshot(matches[0], manifests[matches[0]])

    def update_index(
        self,
        add: Sequence[Snapshot] = (),
        remove: set[str] | frozenset[str] = frozenset(),
        acknowledge: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Append an index entry: the newest entry's snapshots (or, for the first, every authentic one)
        plus `add` minus `remove`, with `acknowledge` (id → why) moved to the acknowledged losses, which
        every later entry carries. Concurrent writers race on the sequence number; the loser retries."""
        for _ in range(20):
            reading = self.read_index()
            lost: dict[str, dict[str, Any]] = {}
            if reading.newest is not None:
                live, started = dict(reading.newest.snapshots), dict(reading.newest.started)
                lost = dict(reading.newest.lost)
                for snapshot in self._unindexed(reading.newest, {s.id for s in add}):
                    live[snapshot.id], started[snapshot.id] = snapshot.plan, snapshot.started
            else:
                first = self.catalog()
                if first.damaged and not first.snapshots:
                    raise RepositoryError(
                        f"none of the {len(first.damaged)} snapshots in {self.target.describe()} authenticates "
                        f"under repository id {self.id}: refusing to start a snapshot index without them "
                        f"(the config replaced by someone without the key?); {recovery_hint(self.target)}"
                    )
                known = first.snapshots
                live, started = {s.id: s.plan for s in known}, {s.id: s.started for s in known}
            for snapshot in add:
                live[snapshot.id], started[snapshot.id] = snapshot.plan, snapshot.started
            for snapshot_id in remove:
                live.pop(snapshot_id, None)
                started.pop(snapshot_id, None)
            for snapshot_id, why in (acknowledge or {}).items():
                lost[snapshot_id] = {**why, "started": started.get(snapshot_id)}
                live.pop(snapshot_id, None)
                started.pop(snapshot_id, None)
            config = self.config if self.config.get("signature") else self._sign_config()
            try:
                sequence = reading.next_sequence()
            except ValueError as exc:
                raise RepositoryError(f"{self.target.describe()}: {exc}") from None
            entry = index.IndexEntry(sequence, live, started, config, time.time(), lost)
            if self.target.put_if_absent(index.entry_key(entry.sequence), index.encode(entry, self.key.signing_key)):
                self._remember(entry.sequence)
                return
        raise TargetError(f"could not append to the snapshot index in {self.target.describe()}: too much contention")

    def _unindexed(self, newest: index.IndexEntry, adding: set[str]) -> list[Snapshot]:
        """Authentic snapshots the newest entry does not name that started after its newest one: a run
        that wrote its manifest but failed before its index entry. (Older unnamed ones were forgotten
        by a prune whose delete was refused, or put there by someone else.)"""
        after = max(newest.started.values(), default=0.0)
        # Ids start with their start second: skip reading what is plainly older.
        second = datetime.fromtimestamp(after, UTC).strftime("%Y%m%dT%H%M%SZ")
        out = []
        for snapshot_id, history in self._manifests().items():
            if snapshot_id in newest.snapshots or snapshot_id in newest.lost or snapshot_id in adding:
                continue
            if snapshot_id.split("-")[0] < second:
                continue
            try:
                snapshot = self.load_snapshot(snapshot_id, history)
            except (CorruptSnapshot, SnapshotNotFound):
                continue
            if snapshot.started > after:
                log.warning("adding snapshot %s to the snapshot index (its run failed after its manifest)", snapshot_id)
                out.append(snapshot)
        return out

    def _sign_config(self) -> dict[str, Any]:
        """After an upgrade: write the unsigned config again, signed (and locked, on a locked target)."""
        signed = sign_config(self.config, self.key)
        self.config_version = self.target.put(CONFIG_KEY, orjson.dumps(signed, option=orjson.OPT_INDENT_2))
        self.config = signed
        log.info("signed the repository config of %s (written before configs were signed)", self.target.describe())
        return signed

    def acknowledge_lost(self, ref: str, reason: str, *, by: str = "", clock: Callable[[], float] = time.time) -> str:
        """Record in the signed index that the missing or damaged snapshot `ref` (an id or unique prefix) is
        permanently lost: list, verify and drills then report it as acknowledged, and prune resumes.
        Refused for an intact snapshot (that is what retention and prune are for) or without a reason."""
        reason = reason.strip()
        if not reason:
            raise RepositoryError("say why the snapshot is lost (--reason): the acknowledgment is kept for auditors")
        catalog = self.catalog()
        if catalog.rolled_back:
            raise RepositoryError(f"{catalog.rolled_back}; acknowledging a loss needs the newest index entry")
        bad = {**{i: "missing" for i in catalog.missing}, **{i: f"damaged: {w}" for i, w in catalog.damaged.items()}}
        matches = [i for i in bad if i.startswith(ref)]
        if len(matches) != 1:
            if any(s.id.startswith(ref) for s in catalog.snapshots):
                raise RepositoryError(
                    f"snapshot {ref} is intact: only a missing or damaged snapshot can be acknowledged as lost "
                    "(retention and `backup prune` forget intact ones)"
                )
            if [i for i in catalog.lost if i.startswith(ref)]:
                raise RepositoryError(f"snapshot {ref} is already acknowledged as lost")
            what = "no missing or damaged snapshot" if not matches else f"{len(matches)} missing or damaged snapshots"
            raise SnapshotNotFound(f"{what} match {ref!r} in {self.target.describe()}")
        snapshot_id = matches[0]
        plan = catalog.plans.get(snapshot_id, "")
        self.update_index(
            acknowledge={
                snapshot_id: {"plan": plan, "reason": reason, "was": bad[snapshot_id], "at": clock(), "by": by}
            }
        )
        return snapshot_id

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.target.delete(snapshot_key(snapshot_id))
