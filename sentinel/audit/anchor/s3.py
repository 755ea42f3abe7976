"""Signed checkpoints published to an S3 bucket under Object Lock (COMPLIANCE), out of the operator's reach.

One object per checkpoint, `<prefix>/<origin>/checkpoint/<size, 20 digits>` (its RFC 3161 token beside
it with `.tsr`), locked until `retention_days` after publishing. Object Lock forbids deleting a version,
not adding one: whoever holds the credentials can still PUT new bytes on top. So a reader lists every
version and takes the oldest as the anchored checkpoint, and a key with more than one version (or a
delete marker) is reported as rewritten. See docs/anchors.md.

The boto3 calls block; the public methods run them in a thread, so asyncio code awaits them directly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
    "AnchorMisconfigured",
    "AnchorUnavailable",
    "AnchoredCheckpoint",
    "ObjectLockAnchor",
    "ObjectLockAnchorSettings",
]

NOTE_TYPE = "text/plain; charset=utf-8"
TOKEN_TYPE = "application/timestamp-reply"  # RFC 3161 section 3.4
_SIZE_DIGITS = 20  # 2**64 - 1 has 20 digits, so keys sort by size
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
    """One checkpoint as the anchor holds it: the bytes first written under its key.

    `versions` counts the object versions under the note's key: 1 unless someone with the credentials
    wrote new bytes on top (which S3 allows, keeping the locked version). `token_versions` is the same
    for the `.tsr` (0: no token), `delete_markers` counts both keys' delete markers (a plain DELETE,
    which Object Lock also allows, hides a key from ordinary listings). `last_modified` is when the
    anchored version was written, by the server's clock.
    """

    origin: str
    size: int
    note: bytes
    token: bytes | None
    versions: int
    last_modified: datetime
    token_versions: int = 0
    delete_markers: int = 0

    @property
    def rewritten(self) -> bool:
        """Someone wrote or deleted after the checkpoint was anchored: what they wrote is not trusted."""
        return self.versions > 1 or self.token_versions > 1 or self.delete_markers > 0


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


def _check_note(origin: str, size: int, note: bytes) -> None:
    # A tlog checkpoint's first two lines are its origin and tree size (c2sp.org/tlog-checkpoint); a note
    # filed under another key would anchor a claim it does not make.
    if not 0 <= size < 10**_SIZE_DIGITS:
        raise ValueError(f"tree size {size} out of range")
    lines = note.split(b"\n", 2)
    if len(lines) < 3 or lines[0] != origin.encode() or lines[1] != str(size).encode():
        head = b" / ".join(lines[:2]).decode(errors="replace")
        raise ValueError(f"the note is not a checkpoint of {origin} at size {size} (it starts {head!r})")


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

    def key(self, origin: str, size: int) -> str:
        """The object key of `origin`'s checkpoint at tree `size` (its token: this + `.tsr`)."""
        _check_origin(origin)
        return f"{self.prefix}{origin}/checkpoint/{size:0{_SIZE_DIGITS}d}"

    async def check(self) -> None:
        """Raise `AnchorMisconfigured` unless the bucket exists, is versioned and has Object Lock enabled."""
        await asyncio.to_thread(self._check)

    async def publish(self, origin: str, size: int, note: bytes, token: bytes | None = None) -> bool:
        """Anchor `origin`'s signed checkpoint at `size` (and its RFC 3161 token, if any), locked in
        COMPLIANCE mode for `retention_days`. True if this call wrote the note, False if the same bytes
        were already anchored; `AnchorConflict` if different bytes are."""
        return await asyncio.to_thread(self._publish, origin, size, note, token)

    async def checkpoints(self, origin: str) -> list[AnchoredCheckpoint]:
        """Every checkpoint anchored for `origin`, by size: each key's oldest version, with its history."""
        return await asyncio.to_thread(self._checkpoints, origin)

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
        _check_note(origin, size, note)
        key = self.key(origin, size)
        written = self._put_once(key, note, NOTE_TYPE, "note")
        if token is not None:
            self._put_once(key + ".tsr", token, TOKEN_TYPE, "token")
        return written

    def _put_once(self, key: str, data: bytes, content_type: str, what: Literal["note", "token"]) -> bool:
        # Look at every version first: the latest may be someone's overwrite, or a delete marker over the
        # anchored version (a conditional PUT would succeed on top of that one).
        anchored = self._anchored(key)
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

    def _checkpoints(self, origin: str) -> list[AnchoredCheckpoint]:
        base = self.key(origin, 0).rpartition("/")[0] + "/"
        notes: dict[int, tuple[str, _History]] = {}
        tokens: dict[int, tuple[str, _History]] = {}
        for key, history in self._histories(base).items():
            name = key[len(base) :]
            digits = name.removesuffix(".tsr")
            if len(digits) != _SIZE_DIGITS or not (digits.isascii() and digits.isdigit()):
                continue  # not ours; the layout has nothing else under checkpoint/
            (tokens if name.endswith(".tsr") else notes)[int(digits)] = (key, history)
        wanted = []  # (size, note key and version, token key and version or None)
        for size in sorted(notes):
            key, history = notes[size]
            if not history.versions:
                continue  # only delete markers: the versions outlived their retention and were removed
            token_key, token_history = tokens.get(size, (key + ".tsr", _History()))
            token = (token_key, token_history.oldest()["VersionId"]) if token_history.versions else None
            wanted.append((size, (key, history.oldest()["VersionId"]), token, history, token_history))
        # The GETs in parallel (a year of checkpoints is tens of thousands of objects); clients are thread-safe.
        reads = [w[1] for w in wanted] + [w[2] for w in wanted if w[2] is not None]
        with ThreadPoolExecutor(_READERS) as pool:
            bodies = dict(zip(reads, pool.map(lambda kv: self._read(*kv), reads), strict=True))
        anchored = []
        for size, note, token, history, token_history in wanted:
            anchored.append(
                AnchoredCheckpoint(
                    origin=origin,
                    size=size,
                    note=bodies[note],
                    token=bodies[token] if token is not None else None,
                    versions=len(history.versions),
                    last_modified=history.oldest()["LastModified"],
                    token_versions=len(token_history.versions),
                    delete_markers=history.delete_markers + token_history.delete_markers,
                )
            )
        return anchored

    def _origins(self) -> list[str]:
        # Versions, not the current listing: a delete marker must not make an origin disappear.
        found = {key[len(self.prefix) :].rpartition("/checkpoint/")[0] for key in self._histories(self.prefix)}
        return sorted(origin for origin in found if origin)
