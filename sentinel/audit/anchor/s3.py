"""Signed checkpoints published to an S3 bucket under Object Lock (COMPLIANCE), out of the operator's reach.

One object per checkpoint, `<prefix>/<origin>/checkpoint/<size, 20 digits>-<root, hex>` (its RFC 3161
token beside it with `.tsr`), locked until `retention_days` after publishing. The key names the tree size
and Merkle root the note signs, so one listing gives every anchored root without reading the objects: a
key, unlike an object's bytes, cannot be written over. Object Lock forbids deleting a version, not adding
one: whoever holds the credentials can still PUT new bytes on top, or add a key. So a reader lists every
version, takes the oldest as the anchored checkpoint, and reports a key with more than one version (or a
delete marker), or a second root for one size, as rewritten. See docs/anchors.md.

The boto3 calls block; the public methods run them in a thread, so asyncio code awaits them directly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from sentinel.audit.settings import ObjectLockAnchorSettings
from sentinel.s3client import oldest_version, s3_client

__all__ = [
    "AnchorConflict",
    "AnchorError",
    "AnchorListing",
    "AnchorMisconfigured",
    "AnchorUnavailable",
    "AnchoredCheckpoint",
    "ObjectLockAnchor",
    "ObjectLockAnchorSettings",
]

NOTE_TYPE = "text/plain; charset=utf-8"
TOKEN_TYPE = "application/timestamp-reply"  # RFC 3161 section 3.4
_SIZE_DIGITS = 20  # 2**64 - 1 has 20 digits, so keys sort by size
_MAX_DEPTH = 32
"""Folders deeper than this are not walked (an origin is a few segments; keys no publisher writes may nest)."""
_READERS = 16
"""Objects read at once when reading an origin's checkpoints back."""
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class AnchorError(Exception):
    """Publishing to or reading from the anchor failed; the message says where (never with credentials)."""


class AnchorUnavailable(AnchorError):
    """The S3 endpoint could not be reached, or kept failing, after the retries: try again later."""


class AnchorMisconfigured(AnchorError):
    """The bucket would not keep what is written: missing, unversioned, without Object Lock, or refusing us."""


class AnchorConflict(AnchorError):
    """Different bytes are already anchored for this checkpoint; history is never replaced."""

    def __init__(self, key: str, what: Literal["note", "token"]) -> None:
        super().__init__(
            f"a different {what} is already anchored at {key}: two checkpoints for one tree size "
            "(a fork, or a rewritten log), or a second time-stamp token for the same checkpoint"
        )
        self.key = key
        self.what = what


@dataclass(frozen=True, slots=True)
class AnchoredCheckpoint:
    """One checkpoint as the anchor holds it: the first key written for its tree size, and its history.

    `root` is the Merkle root the key names (and the note, when read, signs). `versions` counts the object
    versions under the note's key: 1 unless someone with the credentials wrote new bytes on top (which S3
    allows, keeping the locked version). `token_versions` is the same for the `.tsr` (0: no token),
    `delete_markers` counts both keys' delete markers (a plain DELETE, which Object Lock also allows,
    hides a key from ordinary listings). `others` are further keys for the same size with another root,
    added later. `last_modified` is when the anchored version was written, by the server's clock.
    `note` and `token` are the oldest versions' bytes, None until read (`ObjectLockAnchor.read`).
    """

    origin: str
    size: int
    root: bytes
    key: str
    version_id: str
    last_modified: datetime
    versions: int = 1
    token_version_id: str | None = None
    token_versions: int = 0
    delete_markers: int = 0
    others: tuple[str, ...] = ()
    note: bytes | None = None
    token: bytes | None = None

    @property
    def rewritten(self) -> bool:
        """Someone wrote or deleted after the checkpoint was anchored: what they wrote is not trusted."""
        return self.versions > 1 or self.token_versions > 1 or self.delete_markers > 0 or bool(self.others)


@dataclass(frozen=True, slots=True)
class AnchorListing:
    """An origin's anchored checkpoints by size, from one listing of every version; `strays` are keys under
    its `checkpoint/` that no publisher writes (someone with the credentials put them there)."""

    checkpoints: list[AnchoredCheckpoint]
    strays: list[str]


@dataclass
class _History:
    """A key's versions in listing order (S3 lists a key's versions newest first) and its delete markers."""

    versions: list[dict[str, Any]] = field(default_factory=list)
    delete_markers: int = 0

    def oldest(self) -> dict[str, Any]:
        return oldest_version(self.versions)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _check_origin(origin: str) -> None:
    # The origin becomes part of a key: refuse what would make keys ambiguous or escape the prefix.
    if not origin or not origin.isprintable() or any(c.isspace() for c in origin):
        raise ValueError(f"{origin!r} is not a log origin: it must be non-empty, without spaces or control characters")
    if any(part in ("", ".", "..") for part in origin.split("/")):
        raise ValueError(f"{origin!r} is not a log origin: no leading, trailing or doubled '/', no '.' or '..'")


def _check_note(origin: str, size: int, note: bytes) -> bytes:
    """The root hash a checkpoint note of `origin` at `size` signs. A tlog checkpoint's first three lines
    are its origin, tree size and base64 root (c2sp.org/tlog-checkpoint); a note filed under another key
    would anchor a claim it does not make."""
    if not 0 <= size < 10**_SIZE_DIGITS:
        raise ValueError(f"tree size {size} out of range")
    lines = note.split(b"\n", 3)
    if len(lines) < 4 or lines[0] != origin.encode() or lines[1] != str(size).encode():
        head = b" / ".join(lines[:2]).decode(errors="replace")
        raise ValueError(f"the note is not a checkpoint of {origin} at size {size} (it starts {head!r})")
    try:
        root = base64.b64decode(lines[2], validate=True)
    except binascii.Error:
        root = b""
    if len(root) != 32:
        raise ValueError(f"the note's third line is not a base64 SHA-256 root hash: {lines[2][:64]!r}")
    return root


def _parse_name(name: str) -> tuple[int, bytes, bool] | None:
    """(size, root, is a token) from a key's last part, `<20 digits>-<64 hex>[.tsr]`; None: not ours."""
    token = name.endswith(".tsr")
    digits, dash, hexroot = name.removesuffix(".tsr").partition("-")
    if len(digits) != _SIZE_DIGITS or not (digits.isascii() and digits.isdigit()) or not dash or len(hexroot) != 64:
        return None
    try:
        root = bytes.fromhex(hexroot)
    except ValueError:
        return None
    if root.hex() != hexroot:  # upper case: another key for the same root
        return None
    return int(digits), root, token


def _md5(data: bytes) -> str:
    # AWS requires Content-MD5 or an x-amz-checksum-* header on a PUT with Object Lock parameters.
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


class ObjectLockAnchor:
    """Publishes signed checkpoints to an Object Lock bucket and reads back what it anchored.

        anchor = ObjectLockAnchor.from_settings(settings)
        await anchor.check()  # at start: refuse a bucket that could be rewritten
        await anchor.publish("sentinel.local/audit/node-a", 1000, note, token)
        for checkpoint in await anchor.checkpoints("sentinel.local/audit/node-a"):
            assert not checkpoint.rewritten

    `clock` returns epoch seconds; retention runs from it.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str = "",
        retention_days: int = 2190,
        clock: Callable[[], float] = time.time,
        endpoint: str | None = None,
    ) -> None:
        self.client = client
        # Close the connection pool with the anchor, not whenever the garbage collector gets to the client.
        self._close = weakref.finalize(self, client.close)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.retention_days = retention_days
        self.clock = clock
        self.endpoint = endpoint

    @classmethod
    def from_settings(
        cls, settings: ObjectLockAnchorSettings, *, clock: Callable[[], float] = time.time
    ) -> ObjectLockAnchor:
        client = s3_client(settings, max_pool_connections=_READERS)
        return cls(
            client,
            settings.bucket,
            prefix=settings.prefix,
            retention_days=settings.retention_days,
            clock=clock,
            endpoint=settings.endpoint_url,
        )

    def close(self) -> None:
        self._close()

    def describe(self) -> str:
        """Where this is, for messages (no credentials, even ones written into the endpoint URL)."""
        where = ""
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            where = " at " + urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def key(self, origin: str, size: int, root: bytes | None = None) -> str:
        """The object key of `origin`'s checkpoint at tree `size` with Merkle `root` (its token: this +
        `.tsr`); without `root`, the prefix every key for that size starts with."""
        _check_origin(origin)
        key = f"{self.prefix}{origin}/checkpoint/{size:0{_SIZE_DIGITS}d}"
        return key if root is None else f"{key}-{root.hex()}"

    async def check(self) -> None:
        """Raise `AnchorMisconfigured` unless the bucket exists, is versioned and has Object Lock enabled."""
        await asyncio.to_thread(self._check)

    async def publish(self, origin: str, size: int, note: bytes, token: bytes | None = None) -> bool:
        """Anchor `origin`'s signed checkpoint at `size` (and its RFC 3161 token, if any), locked in
        COMPLIANCE mode for `retention_days`. True if this call wrote the note, False if the same bytes
        were already anchored; `AnchorConflict` if different bytes are."""
        return await asyncio.to_thread(self._publish, origin, size, note, token)

    async def listing(self, origin: str) -> AnchorListing:
        """Every checkpoint anchored for `origin`, by size, from the listing alone (no object read): each
        size's first key, its root and history. `ValueError` for an origin no publisher writes."""
        return await asyncio.to_thread(self._listing, origin)

    async def read(self, anchored: list[AnchoredCheckpoint]) -> list[AnchoredCheckpoint]:
        """`anchored` with their notes and tokens read: the oldest version of each, which Object Lock keeps."""
        return await asyncio.to_thread(self._read_all, anchored)

    async def listings(self, expected: Iterable[str] = ()) -> dict[str, AnchorListing]:
        """`listing` of every origin with checkpoints here (`origins`) and of every `expected` origin, found
        or not (listed directly, so that nothing done to the folders around it can hide it), in parallel."""
        return await asyncio.to_thread(self._listings, tuple(expected))

    async def checkpoints(self, origin: str) -> list[AnchoredCheckpoint]:
        """Every checkpoint anchored for `origin`, by size, read: `listing` then `read`."""
        return await self.read((await self.listing(origin)).checkpoints)

    async def origins(self) -> list[str]:
        """The origins that have checkpoints here, sorted."""
        return await asyncio.to_thread(self._origins)

    # The blocking side.

    def _failure(self, what: str, exc: BotoCoreError | ClientError) -> AnchorError:
        if isinstance(exc, BotoConnectionError | HTTPClientError) or (
            isinstance(exc, ClientError) and _status(exc) >= 500
        ):
            return AnchorUnavailable(f"cannot reach the S3 anchor {self.describe()} ({what}): {exc}")
        return AnchorError(f"{what} in the S3 anchor {self.describe()} failed: {exc}")

    def _check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) == "NoSuchBucket":
                raise AnchorMisconfigured(f"the anchor bucket {self.describe()} does not exist") from None
            if _status(exc) == 403:
                raise AnchorMisconfigured(
                    f"access to the anchor bucket {self.describe()} is denied: its credentials need s3:ListBucket"
                ) from None
            raise self._failure("head bucket", exc) from exc
        except BotoCoreError as exc:
            raise self._failure("head bucket", exc) from exc
        try:
            versioning = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            try:
                lock = self.client.get_object_lock_configuration(Bucket=self.bucket)["ObjectLockConfiguration"]
            except ClientError as exc:
                if _code(exc) != "ObjectLockConfigurationNotFoundError":
                    raise
                lock = {}
        except (BotoCoreError, ClientError) as exc:
            raise self._failure("read the versioning and Object Lock configuration", exc) from exc
        if versioning != "Enabled":
            raise AnchorMisconfigured(
                f"versioning is {(versioning or 'off').lower()} on the anchor bucket {self.describe()}: "
                "an anchor that can be overwritten is no anchor; use a bucket created with Object Lock"
            )
        if lock.get("ObjectLockEnabled") != "Enabled":
            raise AnchorMisconfigured(
                f"Object Lock is not enabled on the anchor bucket {self.describe()}: an anchor that can be "
                "overwritten is no anchor; create the bucket with Object Lock (--object-lock-enabled-for-bucket)"
            )

    def _publish(self, origin: str, size: int, note: bytes, token: bytes | None) -> bool:
        root = _check_note(origin, size, note)
        key = self.key(origin, size, root)
        # Every key for this size, notes and tokens: another root anchored for it is a fork, never replaced.
        histories = self._histories(self.key(origin, size))
        for other, history in histories.items():
            if other != key and not other.endswith(".tsr") and history.versions:
                raise AnchorConflict(other, "note")
        written = self._put_once(key, note, NOTE_TYPE, "note", histories.get(key))
        if token is not None:
            self._put_once(key + ".tsr", token, TOKEN_TYPE, "token", histories.get(key + ".tsr"))
        return written

    def _put_once(
        self, key: str, data: bytes, content_type: str, what: Literal["note", "token"], history: _History | None
    ) -> bool:
        # `history` is every version already there: the latest may be someone's overwrite, or a delete
        # marker over the anchored version (a conditional PUT would succeed on top of that one).
        anchored = self._read(key, history.oldest()["VersionId"]) if history and history.versions else None
        if anchored is None:
            if self._put_locked(key, data, content_type):
                return True
            anchored = self._anchored(key)  # created between our look and our write
            if anchored is None:
                raise AnchorError(f"{key} in the S3 anchor {self.describe()} is being written concurrently")
        if anchored != data:
            raise AnchorConflict(key, what)
        return False

    def _put_locked(self, key: str, data: bytes, content_type: str) -> bool:
        """Write a new key, COMPLIANCE-locked; False if it appeared meanwhile (If-None-Match: *)."""
        until = datetime.fromtimestamp(math.ceil(self.clock()), UTC) + timedelta(days=self.retention_days)
        try:
            written = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ContentMD5=_md5(data),
                IfNoneMatch="*",
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=until,
            )
            version = written.get("VersionId")
            if not version:
                raise AnchorMisconfigured(f"the S3 anchor {self.describe()} did not version {key}: it is not versioned")
            head = self.client.head_object(Bucket=self.bucket, Key=key, VersionId=version)
        except ClientError as exc:
            if _code(exc) in _EXISTS:
                return False
            raise self._failure(f"put {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._failure(f"put {key}", exc) from exc
        # A server that takes the lock headers and ignores them would make this anchor a plain bucket.
        retained = head.get("ObjectLockRetainUntilDate")
        if head.get("ObjectLockMode") != "COMPLIANCE" or not isinstance(retained, datetime) or retained < until:
            raise AnchorMisconfigured(
                f"the S3 anchor {self.describe()} stored {key} without COMPLIANCE retention until {until.isoformat()} "
                f"(it reports {head.get('ObjectLockMode')} until {retained}); its credentials need "
                "s3:GetObjectRetention to see it"
            )
        return True

    def _histories(self, prefix: str) -> dict[str, _History]:
        histories: dict[str, _History] = {}
        try:
            for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix):
                for version in page.get("Versions", []):
                    histories.setdefault(version["Key"], _History()).versions.append(version)
                for marker in page.get("DeleteMarkers", []):
                    histories.setdefault(marker["Key"], _History()).delete_markers += 1
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(f"list versions under {prefix}", exc) from exc
        return histories

    def _read(self, key: str, version: str) -> bytes:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(f"get {key} version {version}", exc) from exc
        return body

    def _anchored(self, key: str) -> bytes | None:
        history = self._histories(key).get(key)
        if history is None or not history.versions:
            return None
        return self._read(key, history.oldest()["VersionId"])

    def _listing(self, origin: str) -> AnchorListing:
        base = self.key(origin, 0).rpartition("/")[0] + "/"
        return self._group(origin, base, self._histories(base))

    def _listings(self, expected: tuple[str, ...] = ()) -> dict[str, AnchorListing]:
        origins = sorted(set(self._origins()) | set(expected))

        def one(origin: str) -> AnchorListing:
            try:
                return self._listing(origin)
            except ValueError:  # keys no publisher writes: the origin cannot name a log
                base = f"{self.prefix}{origin}/checkpoint/"
                return AnchorListing([], sorted(self._histories(base)))

        with ThreadPoolExecutor(4) as pool:
            return dict(zip(origins, pool.map(one, origins), strict=True))

    def _group(self, origin: str, base: str, histories: dict[str, _History]) -> AnchorListing:
        notes: dict[int, list[tuple[str, bytes, _History]]] = {}
        tokens: dict[str, _History] = {}
        strays = []
        for key, history in histories.items():
            parsed = _parse_name(key[len(base) :])
            if parsed is None:
                strays.append(key)
            elif parsed[2]:
                tokens[key] = history
            elif history.versions:  # only delete markers: the versions outlived their retention and were removed
                notes.setdefault(parsed[0], []).append((key, parsed[1], history))
        noted = {key for keys in notes.values() for key, _, _ in keys}
        strays += [key for key in tokens if key.removesuffix(".tsr") not in noted]
        anchored = []
        for size in sorted(notes):
            # The first key written for a size is the anchored one; later roots for it are someone's.
            keys = sorted(notes[size], key=lambda item: (item[2].oldest()["LastModified"], item[0]))
            key, root, history = keys[0]
            oldest = history.oldest()
            token = tokens.get(key + ".tsr", _History())
            anchored.append(
                AnchoredCheckpoint(
                    origin=origin,
                    size=size,
                    root=root,
                    key=key,
                    version_id=oldest["VersionId"],
                    last_modified=oldest["LastModified"],
                    versions=len(history.versions),
                    token_version_id=token.oldest()["VersionId"] if token.versions else None,
                    token_versions=len(token.versions),
                    delete_markers=history.delete_markers + token.delete_markers,
                    others=tuple(other for other, _, _ in keys[1:]),
                )
            )
        return AnchorListing(anchored, sorted(strays))

    def _read_all(self, anchored: list[AnchoredCheckpoint]) -> list[AnchoredCheckpoint]:
        reads = [(c.key, c.version_id) for c in anchored]
        reads += [(c.key + ".tsr", c.token_version_id) for c in anchored if c.token_version_id is not None]
        # In parallel (a year of checkpoints is tens of thousands of objects); boto3 clients are thread-safe.
        with ThreadPoolExecutor(_READERS) as pool:
            bodies = dict(zip(reads, pool.map(lambda kv: self._read(*kv), reads), strict=True))
        return [
            replace(
                c,
                note=bodies[(c.key, c.version_id)],
                token=bodies[(c.key + ".tsr", c.token_version_id)] if c.token_version_id is not None else None,
            )
            for c in anchored
        ]

    def _origins(self) -> list[str]:
        """Every origin with a `checkpoint/` folder, found by walking the folders one level at a time.

        Not from one listing of every version under the prefix: SeaweedFS (4.x) drops a folder from a
        `ListObjectVersions` that spans pages when its name extends a sibling's (`node-a.cli` beside
        `node-a`, which is how the CLI's chain is named), so a whole chain would vanish from the reading.
        Each folder is listed with both `ListObjectVersions` and `ListObjectsV2` (a delete marker hides
        a folder from the second, not from the first)."""
        origins, folders = [], [(self.prefix, False)]
        while folders:
            folder, checkpoints = folders.pop()
            # A `checkpoint/` folder holds thousands of keys `<20 digits>-…`: only the folders named after
            # them are read (an instance may be named `checkpoint`), not every key page by page.
            for child in self._subfolders(folder, after=folder + "9" * _SIZE_DIGITS if checkpoints else None):
                is_checkpoints = child == folder + "checkpoint/"
                if is_checkpoints:
                    origins.append(folder[len(self.prefix) :].rstrip("/"))
                if child[len(self.prefix) :].rstrip("/") and child.count("/") <= _MAX_DEPTH:
                    folders.append((child, is_checkpoints))
        return sorted(origin for origin in origins if origin)

    def _subfolders(self, folder: str, after: str | None = None) -> set[str]:
        found: set[str] = set()
        try:
            for method, start in (("list_object_versions", "KeyMarker"), ("list_objects_v2", "StartAfter")):
                extra = {start: after} if after is not None else {}
                for page in self.client.get_paginator(method).paginate(
                    Bucket=self.bucket, Prefix=folder, Delimiter="/", **extra
                ):
                    found.update(p["Prefix"] for p in page.get("CommonPrefixes", []))
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(f"list the folders under {folder or '/'}", exc) from exc
        return found
