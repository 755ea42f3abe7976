"""The one recipe for a boto3 S3 client, shared by backup targets and the checkpoint anchor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import boto3
from botocore.config import Config
from pydantic import SecretStr


class S3Connection(Protocol):
    """Where and how to reach an S3-compatible service (both settings sections have these fields)."""

    endpoint_url: str | None
    region: str
    access_key_id: SecretStr | None
    secret_access_key: SecretStr | None
    max_attempts: int
    connect_timeout: float
    read_timeout: float
    verify_tls: bool


def s3_client(settings: S3Connection, *, max_pool_connections: int) -> Any:
    """A client with standard-mode retries, the timeouts, path-style addressing for a custom endpoint
    (MinIO, SeaweedFS, Ceph), and the keys when given (else boto3's own lookup: env, profile, role)."""
    config = Config(
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    credentials: dict[str, str] = {}
    if settings.access_key_id and settings.secret_access_key:
        credentials["aws_access_key_id"] = settings.access_key_id.get_secret_value()
        credentials["aws_secret_access_key"] = settings.secret_access_key.get_secret_value()
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=config,
        verify=settings.verify_tls,
        **credentials,
    )


def oldest_version(versions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first-written of one key's versions as `list_object_versions` returns them (newest first):
    by time, ties (one-second resolution) broken by that documented order. Under Object Lock it is the
    version an attacker with the credentials could not replace (they can only add newer ones)."""
    return min(enumerate(versions), key=lambda item: (item[1]["LastModified"], -item[0]))[1]
