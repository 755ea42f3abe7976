"""A repository in an S3-compatible bucket (AWS, MinIO, SeaweedFS, Ceph) through boto3.

Requests are retried by botocore's "standard" retry mode (connection errors, throttling, 5xx) up
to `max_attempts`; what still fails becomes a `TargetError`. Objects at or above
`multipart_threshold` go up as multipart uploads. With `object_lock_mode` set, every object is
written with that retention mode and a retain-until date `object_lock_days` (plus a slack of up to
a week, see `lock_slack_days`) ahead, so a compromised host cannot delete history; lease objects
(`locks/`, rewritten every few minutes while held) get one day, so their thousands of versions do
not pile up for months. Deleting removes every
*version* of a key (never just adds a delete marker): on a locked bucket the server refuses, the
object stays fully intact and the caller gets `ObjectLocked`. Leases use conditional writes
(`If-None-Match: *`, `If-Match`). `put` returns the version id, `get` reads a named version and
`histories` lists every version, so the repository can read what it wrote whatever was added on top.
"""

from __future__ import annotations

import builtins
import io
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from sentinel.backup.settings import TargetSettings
from sentinel.backup.targets import (
    History,
    ObjectInfo,
    ObjectLocked,
    ObjectNotFound,
    TargetError,
    Version,
    lock_slack_days,
)
from sentinel.s3client import oldest_version, s3_client

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
LEASE_PREFIX = "locks/"
LEASE_LOCK_DAYS = 1
DELETE_ROUNDS = 3
log = logging.getLogger("sentinel.backup")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def bucket_default_retention(client: Any, bucket: str) -> tuple[str, int] | None:
    """The bucket's default Object Lock retention (mode, days), if it has one.

    A target without `object_lock_mode` on such a bucket adopts it: the server locks every upload by
    that default anyway, and without knowing it the chunks a later snapshot reuses would never be
    re-locked and could expire while that snapshot still needs them."""
    try:
        config = client.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration", {})
    except ClientError as exc:
        if _code(exc) in {"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound", "404"}:
            return None
        # Read-only credentials (restore, verify) need not have it; backups should (see docs/backup.md).
        log.warning(
            "could not read the Object Lock configuration of bucket %s (%s): if the bucket locks objects by "
            "default, set object_lock_mode and object_lock_days on the target (or allow "
            "s3:GetBucketObjectLockConfiguration), or reused chunks are never re-locked",
            bucket,
            _code(exc) or exc,
        )
        return None
    except BotoCoreError as exc:
        raise TargetError(f"reading the Object Lock configuration of bucket {bucket} failed: {exc}") from exc
    retention = config.get("Rule", {}).get("DefaultRetention", {})
    if config.get("ObjectLockEnabled") != "Enabled" or not retention.get("Mode"):
        return None
    days = int(retention.get("Days") or 0) or int(retention.get("Years") or 0) * 365
    if days <= 0:
        return None
    log.info(
        "bucket %s locks every object by default (%s, %d days): adopting that as the target's object_lock_mode",
        bucket,
        retention["Mode"],
        days,
    )
    return str(retention["Mode"]), days


class S3Target:
    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str = "",
        lock_mode: str | None = None,
        lock_days: int = 30,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunksize: int = 16 * 1024 * 1024,
        endpoint: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.clock = clock
        # The client's connection pool must be closed, not left to the garbage collector: targets are
        # opened per operation and dropped, and unclosed sockets pile up in long-lived processes.
        weakref.finalize(self, client.close)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.lock_mode = lock_mode
        self.lock_days: int | None = lock_days if lock_mode else None
        self.endpoint = endpoint
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize, max_concurrency=4
        )
        self._versioned: bool | None = None
        self._versioned_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: TargetSettings, *, max_pool_connections: int = 32, clock: Callable[[], float] = time.time
    ) -> S3Target:
        assert settings.bucket is not None
        client = s3_client(settings, max_pool_connections=max_pool_connections)
        mode: str | None = settings.object_lock_mode
        days = settings.object_lock_days
        if mode is None:
            mode, days = bucket_default_retention(client, settings.bucket) or (None, days)
        return cls(
            client,
            settings.bucket,
            prefix=settings.prefix,
            lock_mode=mode,
            lock_days=days,
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunksize,
            endpoint=settings.endpoint_url,
            clock=clock,
        )

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _fail(self, what: str, key: str, exc: Exception) -> TargetError:
        return TargetError(f"{what} {key} in {self.describe()} failed: {exc}")

    def _lock_args(self, key: str) -> dict[str, Any]:
        if not self.lock_mode or self.lock_days is None:
            return {}
        if key.startswith(LEASE_PREFIX):
            days = min(LEASE_LOCK_DAYS, self.lock_days)
        else:
            days = self.lock_days + lock_slack_days(self.lock_days)
        # Whole seconds, rounded up: servers keep retain-until dates to the second.
        until = datetime.fromtimestamp(math.ceil(self.clock()), UTC) + timedelta(days=days)
        return {"ObjectLockMode": self.lock_mode, "ObjectLockRetainUntilDate": until}

    def put(self, key: str, data: bytes | bytearray) -> str | None:
        full = self.prefix + key
        try:
            if len(data) >= self.transfer.multipart_threshold:
                self.client.upload_fileobj(
                    io.BytesIO(data), self.bucket, full, ExtraArgs=self._lock_args(key), Config=self.transfer
                )
                return None  # the transfer manager does not hand back the version id
            response = self.client.put_object(Bucket=self.bucket, Key=full, Body=data, **self._lock_args(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("put", key, exc) from exc
        version = response.get("VersionId")
        return str(version) if version and version != "null" else None

    def get(self, key: str, version: str | None = None) -> bytes:
        return self._get(key, version)[0]

    def get_with_token(self, key: str) -> tuple[bytes, str]:
        return self._get(key, None)

    def _get(self, key: str, version: str | None) -> tuple[bytes, str]:
        try:
            extra = {"VersionId": version} if version else {}
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **extra)
            return response["Body"].read(), str(response["ETag"])
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND or _code(exc) in ("NoSuchVersion", "MethodNotAllowed", "405"):
                raise ObjectNotFound(key) from None
            raise self._fail("get", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("get", key, exc) from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][len(self.prefix) :], int(item["Size"]), item["LastModified"])
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list", prefix, exc) from exc

    def histories(self, prefix: str) -> dict[str, History]:
        if not self.versioned():
            return {i.key: History(i.key, [Version(None, i.size, i.modified)]) for i in self.list(prefix)}
        raw: dict[str, list[dict[str, Any]]] = {}
        histories: dict[str, History] = {}
        try:
            for page in self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            ):
                for item in page.get("Versions", []):
                    raw.setdefault(item["Key"], []).append(item)
                for marker in page.get("DeleteMarkers", []):
                    history = histories.setdefault(marker["Key"], History(marker["Key"][len(self.prefix) :]))
                    history.delete_markers += 1
                    history.hidden = history.hidden or bool(marker.get("IsLatest"))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("list versions of", prefix, exc) from exc
        for full, items in raw.items():
            history = histories.setdefault(full, History(full[len(self.prefix) :]))
            first = oldest_version(items)
            rest = sorted((i for i in items if i is not first), key=lambda i: i["LastModified"])
            history.versions = [Version(str(i["VersionId"]), int(i["Size"]), i["LastModified"]) for i in [first, *rest]]
        return {h.key: h for h in histories.values() if h.versions}

    def lock_until(self, key: str, version: str | None) -> datetime | None:
        return self._retain_until(self.prefix + key, version)

    def extend_lock(self, key: str, version: str | None, until: datetime) -> None:
        if not self.lock_mode:
            return
        full = self.prefix + key
        extra = {"VersionId": version} if version else {}
        try:
            self.client.put_object_retention(
                Bucket=self.bucket,
                Key=full,
                Retention={"Mode": self.lock_mode, "RetainUntilDate": until},
                **extra,
            )
        except ClientError as exc:
            # Refused when it would shorten the retention (someone already extended it further): fine.
            mode, current = self._retention(full, version)
            if current is not None and current >= until and mode == self.lock_mode:
                return
            if mode is not None and mode != self.lock_mode:
                raise TargetError(self._mode_changed(key, mode)) from exc
            raise self._fail("extend the retention of", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("extend the retention of", key, exc) from exc

    def versioned(self) -> bool:
        with self._versioned_lock:
            if self._versioned is None:
                try:
                    status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
                except (BotoCoreError, ClientError) as exc:
                    raise self._fail("get versioning of", "", exc) from exc
                self._versioned = status in ("Enabled", "Suspended")
            return self._versioned

    def delete(self, key: str) -> None:
        full = self.prefix + key
        try:
            if not self.versioned():
                self.client.delete_object(Bucket=self.bucket, Key=full)
                return
            # Every version, page by page, then listed again to confirm: a key may have more versions
            # than one listing page holds, and a version written meanwhile must not survive unnoticed.
            for _ in range(DELETE_ROUNDS):
                remaining = self._versions_of(full)
                if not remaining:
                    return
                for version_id in remaining:
                    try:
                        self.client.delete_object(Bucket=self.bucket, Key=full, VersionId=version_id)
                    except ClientError as exc:
                        if _code(exc) in ("AccessDenied", "InvalidRequest", "403"):
                            raise ObjectLocked(key, self._retain_until(full, version_id)) from None
                        raise
            if self._versions_of(full):
                raise TargetError(f"delete {key} in {self.describe()}: versions keep appearing; not deleted")
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("delete", key, exc) from exc

    def _versions_of(self, full: str) -> builtins.list[str]:
        """The id of every version and delete marker of exactly `full`, over all listing pages."""
        out: builtins.list[str] = []
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if item["Key"] == full:
                    out.append(str(item["VersionId"]))
        return out

    def _retain_until(self, full: str, version: str | None) -> datetime | None:
        return self._retention(full, version)[1]

    def _retention(self, full: str, version: str | None) -> tuple[str | None, datetime | None]:
        """The Object Lock mode and retain-until date of a version (None, None when unknown)."""
        try:
            extra = {"VersionId": version} if version else {}
            head = self.client.head_object(Bucket=self.bucket, Key=full, **extra)
        except (BotoCoreError, ClientError):
            return None, None
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        return (str(mode) if mode else None), (until if isinstance(until, datetime) else None)

    def _mode_changed(self, key: str, mode: str) -> str:
        if mode == "COMPLIANCE":
            why = (
                "S3 never lets a COMPLIANCE lock become GOVERNANCE (nor be shortened), so the snapshots using it "
                "cannot be protected for their retention this way; set object_lock_mode: COMPLIANCE again on this "
                "target (or point a GOVERNANCE target at a new prefix or bucket)"
            )
        else:
            why = (
                f"changing a {mode} lock to {self.lock_mode} needs s3:BypassGovernanceRetention, which Sentinel's "
                f"credentials should not have; set object_lock_mode: {mode} again on this target (or point it at a "
                "new prefix or bucket)"
            )
        return (
            f"cannot extend the Object Lock of {key} in {self.describe()}: it is locked in {mode} mode, but the "
            f"target's object_lock_mode is now {self.lock_mode}; {why}"
        )

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*", **self._lock_args(key)
            )
        except ClientError as exc:
            if _code(exc) in _PRECONDITION:
                return None
            raise self._fail("conditional put", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("conditional put", key, exc) from exc
        return str(response["ETag"])

    def put_if_match(self, key: str, data: bytes, token: str) -> str | None:
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, IfMatch=token, **self._lock_args(key)
            )
        except ClientError as exc:
            if _code(exc) in _PRECONDITION or _code(exc) in _NOT_FOUND:
                return None
            raise self._fail("conditional put", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("conditional put", key, exc) from exc
        return str(response["ETag"])

    def delete_if_match(self, key: str, token: str) -> bool:
        # Compare, then delete: S3 general-purpose buckets do not all honour If-Match on DELETE. The
        # window only matters if our lease already expired and another holder took it in between.
        try:
            _, current = self.get_with_token(key)
        except ObjectNotFound:
            return False
        if current != token:
            return False
        try:
            # No VersionId: on a versioned bucket this adds a delete marker, which Object Lock allows.
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("delete", key, exc) from exc
        return True
