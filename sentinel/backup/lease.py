"""Leases: locks in the repository's own target that expire, so a crashed holder never blocks forever.

Why here and not a local file lock: several Sentinel instances on different hosts share only the
target, and the target's conditional writes (S3 `If-None-Match: *` / `If-Match`; on a local or
shared directory, compare-and-write under `flock`) give exactly one winner. A lease records its
holder and an expiry; the holder renews it every ttl/3 from a heartbeat thread; anyone may take
over a lease whose expiry has passed (with a conditional replace, so only one does).

Names in use: `backup-<plan>` (one instance runs a plan at a time) and `prune` (exclusive with
every backup: a prune must never delete a chunk that a running backup has decided to reuse).
Each side writes its own lease first and then looks for the other's, so at least one of two
racing parties sees the other and backs off.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from sentinel.backup.targets import ObjectNotFound, Target, TargetError

log = logging.getLogger("sentinel.backup")
PREFIX = "locks/"


class LeaseHeld(Exception):
    """Someone else holds the lease (or a conflicting one); the message names the holder."""


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    owner: str
    host: str
    pid: int
    expires: float

    def describe(self, now: float | None = None) -> str:
        left = self.expires - (time.time() if now is None else now)
        return f"{self.name} held by {self.host} pid {self.pid} (expires in {left:.0f}s)"


def _parse(name: str, data: bytes) -> LeaseInfo | None:
    try:
        raw: dict[str, Any] = orjson.loads(data)
        return LeaseInfo(name, str(raw["owner"]), str(raw["host"]), int(raw["pid"]), float(raw["expires"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # unreadable: treated as expired, so it can be taken over


def live_leases(target: Target, prefix: str = "", *, now: float | None = None) -> list[LeaseInfo]:
    """Unexpired leases whose name starts with `prefix` (at `now`, default the current time)."""
    found = []
    if now is None:
        now = time.time()
    for info in target.list(PREFIX + prefix):
        name = info.key[len(PREFIX) :]
        try:
            lease = _parse(name, target.get(info.key))
        except ObjectNotFound:
            continue
        if lease is not None and lease.expires > now:
            found.append(lease)
    return found


class Lease:
    """`with Lease(target, "backup-daily", ttl=300):` holds the lease, renewing it until the block ends.

    Expiry times are read from `clock` (epoch seconds; tests pass a fake one to expire a lease
    without waiting). Renewals still happen every ttl/3 of real time."""

    def __init__(
        self,
        target: Target,
        name: str,
        *,
        ttl: float = 300.0,
        purpose: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target, self.name, self.ttl, self.purpose = target, name, ttl, purpose
        self.clock = clock
        self.key = PREFIX + name
        self.owner = uuid.uuid4().hex
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._lock = threading.Lock()

    def _body(self) -> bytes:
        return orjson.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "purpose": self.purpose,
                "expires": self.clock() + self.ttl,
            }
        )

    def acquire(self) -> None:
        token = self.target.put_if_absent(self.key, self._body())
        if token is None:
            try:
                data, current = self.target.get_with_token(self.key)
            except ObjectNotFound:  # released in between: try once more
                token = self.target.put_if_absent(self.key, self._body())
            else:
                holder = _parse(self.name, data)
                now = self.clock()
                if holder is not None and holder.expires > now:
                    raise LeaseHeld(holder.describe(now))
                log.warning("taking over expired lease %s", holder.describe(now) if holder else self.name)
                token = self.target.put_if_match(self.key, self._body(), current)
            if token is None:
                raise LeaseHeld(f"{self.name} was taken by another instance at the same moment")
        self._token = token
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except TargetError as exc:  # keep trying until the lease would expire
                log.warning("could not renew lease %s: %s", self.name, exc)

    def renew(self) -> None:
        with self._lock:
            if self._token is None or self._lost:
                return
            token = self.target.put_if_match(self.key, self._body(), self._token)
            if token is None:
                self._lost = f"lease {self.name} was taken over by another instance"
                log.error("%s", self._lost)
            else:
                self._token = token

    def check(self) -> None:
        """Raise if the lease was lost (e.g. this process stalled past its expiry and another took it)."""
        if self._lost:
            raise LeaseHeld(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._token is not None and not self._lost:
                try:
                    self.target.delete_if_match(self.key, self._token)
                except TargetError as exc:  # it expires on its own
                    log.warning("could not release lease %s: %s", self.name, exc)
            self._token = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
