"""A repository in an S3-compatible bucket (AWS, MinIO, SeaweedFS, Ceph) through boto3.

Requests are retried by botocore's "standard" retry mode (connection errors, throttling, 5xx) up
to `max_attempts`; what still fails becomes a `TargetError`. Objects at or above
`multipart_threshold` go up as multipart uploads. With `object_lock_mode` set, every object is
written with that retention mode and a retain-until date `object_lock_days` ahead, so a
compromised host cannot delete history. Deleting removes every *version* of a key (never just
adds a delete marker): on a locked bucket the server refuses, the object stays fully intact and
the caller gets `ObjectLocked`. Leases use conditional writes (`If-None-Match: *`, `If-Match`).
"""

from __future__ import annotations

import io
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from sentinel.backup.settings import TargetSettings
from sentinel.backup.targets import ObjectInfo, ObjectLocked, ObjectNotFound, TargetError
from sentinel.s3client import s3_client

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


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
    ) -> None:
        self.client = client
        # The client's connection pool must be closed, not left to the garbage collector: targets are
        # opened per operation and dropped, and unclosed sockets pile up in long-lived processes.
        weakref.finalize(self, client.close)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.lock_mode = lock_mode
        self.lock_days = lock_days
        self.endpoint = endpoint
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize, max_concurrency=4
        )
        self._versioned: bool | None = None
        self._versioned_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: TargetSettings, *, max_pool_connections: int = 32) -> S3Target:
        assert settings.bucket is not None
        client = s3_client(settings, max_pool_connections=max_pool_connections)
        return cls(
            client,
            settings.bucket,
            prefix=settings.prefix,
            lock_mode=settings.object_lock_mode,
            lock_days=settings.object_lock_days,
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunksize,
            endpoint=settings.endpoint_url,
        )

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _fail(self, what: str, key: str, exc: Exception) -> TargetError:
        return TargetError(f"{what} {key} in {self.describe()} failed: {exc}")

    def _lock_args(self) -> dict[str, Any]:
        if not self.lock_mode:
            return {}
        until = datetime.now(UTC) + timedelta(days=self.lock_days)
        return {"ObjectLockMode": self.lock_mode, "ObjectLockRetainUntilDate": until}

    def put(self, key: str, data: bytes | bytearray) -> None:
        full = self.prefix + key
        try:
            if len(data) >= self.transfer.multipart_threshold:
                self.client.upload_fileobj(
                    io.BytesIO(data), self.bucket, full, ExtraArgs=self._lock_args(), Config=self.transfer
                )
            else:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=data, **self._lock_args())
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("put", key, exc) from exc

    def get(self, key: str) -> bytes:
        return self.get_with_token(key)[0]

    def get_with_token(self, key: str) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return response["Body"].read(), str(response["ETag"])
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
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
            versions = self.client.list_object_versions(Bucket=self.bucket, Prefix=full)
            for item in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
                if item["Key"] != full:
                    continue
                try:
                    self.client.delete_object(Bucket=self.bucket, Key=full, VersionId=item["VersionId"])
                except ClientError as exc:
                    if _code(exc) in ("AccessDenied", "InvalidRequest", "403"):
                        raise ObjectLocked(key, self._retain_until(full, item["VersionId"])) from None
                    raise
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("delete", key, exc) from exc

    def _retain_until(self, full: str, version: str) -> datetime | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full, VersionId=version)
        except (BotoCoreError, ClientError):
            return None
        until = head.get("ObjectLockRetainUntilDate")
        return until if isinstance(until, datetime) else None

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if _code(exc) in _PRECONDITION:
                return None
            raise self._fail("conditional put", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("conditional put", key, exc) from exc
        return str(response["ETag"])

    def put_if_match(self, key: str, data: bytes, token: str) -> str | None:
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, IfMatch=token)
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
