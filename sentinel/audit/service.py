"""`AuditService`: the audit trail's parts, built from settings, started and stopped together.

Used by `sentinel serve` (one chain per instance), by the admin API, and by the CLI, which writes
its own events (content access, key rotation) into a separate chain, `<instance>.cli`, so two
processes never append to the same chain.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry

from sentinel.audit.anchor.publish import AnchorMetrics, AnchorPublisher
from sentinel.audit.kek import KeyUnavailable, LocalKeyFile
from sentinel.audit.keyring import KeyRing
from sentinel.audit.record import Event, RecordCorrupt, blind_index, decrypt
from sentinel.audit.shipper import Shipper
from sentinel.audit.signer import Pkcs11Signer
from sentinel.audit.spool import Spool, SpoolUnavailable, WriterCopy
from sentinel.audit.store import AuditStore, SearchQuery
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.audit.trail import AuditJournal, AuditMetrics, AuditSink, AuditTrail
from sentinel.audit.verify import VerifyReport, verify
from sentinel.config import ConfigError, Settings
from sentinel.telemetry.metrics import ReadAtScrape

log = logging.getLogger("sentinel.audit")


def open_store(settings: Settings, *, read_only: bool = False) -> AuditStore:
    use_es = settings.audit.store == "elasticsearch" or (
        settings.audit.store == "auto" and settings.elasticsearch.url is not None
    )
    if not use_es:
        return EmbeddedStore(settings.resolve_path(settings.audit.store_path), read_only=read_only)
    es = settings.elasticsearch
    if not es.url:
        raise ConfigError(
            "audit.store is elasticsearch but elasticsearch.url (env SENTINEL_ELASTICSEARCH_URL) is unset"
        )
    from elasticsearch import AsyncElasticsearch

    from sentinel.audit.store.elasticsearch import ElasticsearchStore

    kwargs: dict[str, Any] = {"request_timeout": es.request_timeout, "verify_certs": es.verify_certs}
    if es.api_key is not None:
        kwargs["api_key"] = es.api_key.get_secret_value()
    elif es.username and es.password is not None:
        kwargs["basic_auth"] = (es.username, es.password.get_secret_value())
    if es.ca_certs is not None:
        kwargs["ca_certs"] = str(es.ca_certs)
    client = AsyncElasticsearch([u.strip() for u in es.url.split(",")], **kwargs)
    return ElasticsearchStore(
        client, prefix=es.index_prefix, retention_days=es.retention_days, shards=es.shards, replicas=es.replicas
    )


def _server_keys(settings: Settings) -> list[Any]:
    """Wrapped keys from the server's spool (read-only), for the CLI's own chain."""
    import sqlite3

    import orjson

    from sentinel.audit.keyring import WrappedKey

    path = settings.resolve_path(settings.audit.spool_path)
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return [WrappedKey.from_dict(orjson.loads(b)) for (b,) in db.execute("SELECT body FROM keys")]
        finally:
            db.close()
    except sqlite3.Error:
        return []


def load_or_create_keks(path: Path, spool_has_keys: bool) -> LocalKeyFile:
    """The KEK file; on a fresh install (nothing encrypted yet) a missing one is created, loudly."""
    if path.exists() or spool_has_keys:
        return LocalKeyFile.load(path)
    keks = LocalKeyFile.create(path)
    banner = "=" * 78
    log.warning(
        "\n%s\nCreated a new key-encryption key %s in %s (mode 0600).\n"
        "Every audit record is encrypted under keys it protects. Back it up somewhere SAFE and SEPARATE\n"
        "(not with the data, not in Elasticsearch, not in Sentinel backups): without it the audit\n"
        "trail cannot be read.\n%s",
        banner,
        keks.active_id,
        path,
        banner,
    )
    return keks


@dataclass
class Reader:
    """What reading the trail needs: the store, a key ring that knows the store's keys, and the
    checkpoint public keys to trust (pinned ones when given, else those stored beside the records)."""

    store: AuditStore
    keyring: KeyRing | None
    public_keys: dict[str, Ed25519PublicKey]

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        return self.public_keys.get(kid)


async def stored_public_keys(store: AuditStore) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for key in await store.keys():
        if key.public:
            keys[key.kid] = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public))
    return keys


def local_writers(settings: Settings, instance: str | None = None) -> list[WriterCopy]:
    """The writers' copies in this data directory: the serving instance's spool and the CLI's (its
    chain is `<instance>.cli`), those that exist."""
    if instance is None:
        marker = settings.data_dir / "instance-id"
        instance = settings.instance_id or (marker.read_text().strip() if marker.exists() else None)
        if not instance:
            return []
    path = settings.resolve_path(settings.audit.spool_path)
    copies = [WriterCopy(instance, path), WriterCopy(f"{instance}.cli", path.with_name("cli-" + path.name))]
    return [copy for copy in copies if copy.path.exists()]


WRITE_FAILURE_HOLD = 10.0
"""Seconds `/readyz` keeps failing after a failed write when nothing else is wrong: long enough for a
load balancer to see it, short enough that an instance no longer sent traffic is tried again."""


class InstanceRunning(Exception):
    """Another `sentinel serve` holds this data directory's audit chain."""


class AuditService:
    def __init__(self, settings: Settings, registry: CollectorRegistry, instance: str, *, cli: bool = False) -> None:
        self.settings = settings
        self.instance = f"{instance}.cli" if cli else instance
        self.cli = cli
        spool_path = settings.resolve_path(settings.audit.spool_path)
        if cli:
            spool_path = spool_path.with_name("cli-" + spool_path.name)
        self.spool = Spool(spool_path, synchronous="FULL", max_bytes=None if cli else settings.audit.spool_max_bytes)
        self.metrics = AuditMetrics(registry)
        self.store = open_store(settings)
        self.keyring: KeyRing | None = None
        self.signer: Pkcs11Signer | None = None
        self.trail = AuditTrail(
            self.spool,
            self.instance,
            self.metrics,
            checkpoint_every=settings.audit.checkpoint_every,
            checkpoint_interval=settings.audit.checkpoint_interval,
            origin_prefix=settings.audit.log_origin,
        )
        self.shipper: Shipper | None = None
        self.error: str | None = None
        self._lock_fd: int | None = None
        self._anchor_metrics = AnchorMetrics(registry) if settings.audit.anchor is not None else None
        self.anchors = self._anchor_publisher()

    async def start(self) -> None:
        """Open everything. A spool that cannot be opened is not fatal here: the service reports
        itself unavailable (strict mode then refuses requests, best_effort counts losses)."""
        if self.cli:
            self._lock()
        else:
            self._claim_chain()
        try:
            await self.spool.run(self.spool.open)
        except SpoolUnavailable as exc:
            self.error = str(exc)
            self.trail.unavailable = f"audit trail unavailable: {exc}"
            log.error("audit trail unavailable: %s", exc)
            return
        spool_keys = await self.spool.run(self.spool.stored_keys)
        keks = load_or_create_keks(self.settings.resolve_path(self.settings.key_file), bool(spool_keys))
        self.keyring = KeyRing(keks, self.spool)
        if self.settings.audit.signer is not None:
            # The PKCS#11 module loads and logs in here, once; SignerUnavailable stops the start.
            self.signer = await asyncio.to_thread(Pkcs11Signer.open, self.settings.audit.signer)
            self.keyring.use_signer(self.signer)
        if self.cli:
            # Share the deployment's blind-index key: learn the server's keys before making any.
            self.keyring.learn(await asyncio.to_thread(_server_keys, self.settings))
        await self.store.open()
        try:
            self.keyring.learn(await self.store.keys())
        except Exception as exc:  # an unreachable store must not stop recording
            log.warning("could not read keys from the audit store: %s", exc)
        await self.trail.start(self.keyring)
        self.shipper = Shipper(
            self.spool,
            self.store,
            self.metrics,
            spool_retention=self.settings.audit.spool_retention_hours * 3600,
            anchoring=self.anchors is not None,
        )
        if not self.cli:
            self.shipper.start()
        if self.anchors is not None:
            self.trail.on_checkpoint = self.anchors.nudge
            self.trail.anchor_lag = self.anchors.lag
            self.trail.anchor_lag_max = self.settings.audit.anchor_lag_max
            await self.anchors.refresh()
            if not self.cli:
                self.anchors.start()

    def _anchor_publisher(self) -> AnchorPublisher | None:
        """The publisher of checkpoints to `audit.anchor` (with `audit.timestamp`), when configured."""
        audit = self.settings.audit
        if audit.anchor is None or self._anchor_metrics is None:
            return None
        from sentinel.audit.anchor.s3 import ObjectLockAnchor
        from sentinel.audit.anchor.tsa import TimestampAuthority

        stamps = None
        if audit.timestamp is not None:
            certificates = [self.settings.resolve_path(p) for p in audit.timestamp.certificates]
            stamps = TimestampAuthority(audit.timestamp.url, certificates, timeout=audit.timestamp.timeout)
        anchor = ObjectLockAnchor.from_settings(audit.anchor)
        return AnchorPublisher(self.spool, anchor, self._anchor_metrics, timestamps=stamps)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        if self.keyring is not None:
            await self.trail.stop()
        if self.anchors is not None:
            if self.cli:  # the CLI's own chain: anchor what it signed, or leave it for the next run
                with contextlib.suppress(Exception):
                    await self.anchors.publish_once()
            else:
                await self.anchors.stop(drain_timeout)
        if self.shipper is not None:
            if self.cli:
                await self.ship_now()
            else:
                await self.shipper.stop(drain_timeout)
        await self.store.close()
        if self.signer is not None:
            await asyncio.to_thread(self.signer.close)
        if self.error is None:
            await asyncio.to_thread(self.spool.close)
        self._unlock()

    async def ship_now(self) -> bool:
        """Ship everything pending (CLI). False if the store is unreachable (the spool keeps it)."""
        assert self.shipper is not None
        try:
            while await self.shipper.ship_once():
                pass
        except Exception as exc:
            log.warning("could not ship audit events yet (kept locally, shipped on the next run): %s", exc)
            return False
        return True

    def _lock(self) -> None:
        path = self.spool.path.with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def _claim_chain(self) -> None:
        """One writer per chain: the serving instance holds `audit/serve.lock` while it runs; a second
        `sentinel serve` on the same data directory stops here instead of forking the chain."""
        path = self.spool.path.parent / "serve.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return  # nor can the spool be opened there: the service reports itself unavailable
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InstanceRunning(
                f"another sentinel serve (pid {holder}) is writing the audit trail in {self.settings.data_dir}: "
                "one writer per chain. Give each instance its own data_dir and instance_id."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- wiring ------------------------------------------------------------------------------
    def sink(self) -> AuditSink:
        return AuditSink(self.trail)

    def journal(self, provider: str = "auto") -> AuditJournal:
        return AuditJournal(self.trail, instance=self.instance, provider=provider)

    def register_gauges(self, gauges: ReadAtScrape) -> None:
        self.metrics.register_gauges(gauges)
        gauges.gauge(
            "sentinel_audit_spool_bytes",
            "Bytes the audit spool's pages hold (its bound, audit.spool_max_bytes, is in /readyz).",
            [],
            lambda: [((), float(self.spool.used_bytes))],
        )
        if self.anchors is not None:
            self.anchors.register_gauges(gauges)

    def ready(self) -> tuple[bool, str]:
        """Whether calls can be served as the mode requires: strict mode is not ready while it
        cannot record (a failed write, the spool at its bound, too little disk, anchoring behind)."""
        if self.keyring is None:
            return False, f"audit trail unavailable: {self.error}"
        problems = self.problems()
        if problems:
            if self.settings.audit.mode == "strict":
                return False, "strict mode cannot record: " + "; ".join(problems)
            return True, "; ".join(problems) + " (best_effort: serving, records are being lost)"
        if self.shipper is not None and self.shipper.down_since is not None:
            return True, "store unreachable; records are spooled locally"
        return True, f"recording (sequence {self.trail.head.seq})"

    def problems(self, now: float | None = None) -> list[str]:
        """What stops the trail recording now; read from any thread (the admin API's, at scrape)."""
        now = time.time() if now is None else now
        audit = self.settings.audit
        found = []
        spool = self.spool
        short = False
        if spool.max_bytes is not None and spool.used_bytes >= spool.max_bytes * 0.95:
            short = True
            found.append(f"audit spool at {spool.used_bytes} of its {spool.max_bytes} bytes (audit.spool_max_bytes)")
        try:
            free = spool.free_bytes()
        except OSError as exc:
            found.append(f"cannot read the free space of the spool's disk: {exc.strerror}")
        else:
            if free < audit.spool_min_free_bytes:
                short = True
                found.append(
                    f"{free} bytes free on the spool's disk (audit.spool_min_free_bytes: {audit.spool_min_free_bytes})"
                )
        failure = self.trail.write_failure
        if failure is not None:
            at, error, used = failure
            # A full spool or disk stays full until pruning frees pages: no need to wait for a write to tell.
            still_full = "full" in error and spool.used_bytes >= used
            if short or still_full or now - at < WRITE_FAILURE_HOLD:
                found.append(f"the last write failed: {error}")
        if self.trail.anchor_lag is not None:
            lag = self.trail.anchor_lag()
            if lag > self.trail.anchor_lag_max:
                limit = self.trail.anchor_lag_max
                found.append(f"checkpoints not anchored for {lag:.0f} s (audit.anchor_lag_max is {limit:.0f} s)")
        return found

    # -- reading -----------------------------------------------------------------------------
    async def reader(self, pinned: dict[str, Ed25519PublicKey] | None = None) -> Reader:
        keyring = self.keyring
        if keyring is not None:
            keyring.learn(await self.store.keys())
        return Reader(self.store, keyring, pinned if pinned is not None else await stored_public_keys(self.store))

    async def record_event(self, event: Event) -> None:
        await self.trail.record_event(event)

    async def search(self, query: SearchQuery, *, user: str | None = None) -> list[dict[str, Any]]:
        """Records' metadata; `user` (a raw Dify end-user id) is matched through its blind index."""
        if user is not None:
            if self.keyring is None:
                raise KeyUnavailable(f"audit trail unavailable: {self.error}")
            query = dataclasses.replace(query, user_index=blind_index(self.keyring.index_key(), user))
        return await self.store.search(query)

    async def show(self, record_id: str, *, decrypt_content: bool, actor: str, reason: str | None) -> dict[str, Any]:
        """A record's metadata, and with `decrypt_content` its content — after the access itself is
        durably recorded in the trail (no reason, or a trail that cannot record it: no content)."""
        doc = await self.store.get(record_id)
        if doc is None:
            raise LookupError(f"no audit record {record_id}")
        if not decrypt_content:
            doc.pop("encrypted", None)
            return doc
        if not reason or not reason.strip():
            raise PermissionError("decrypting audit content requires a stated reason")
        await self.record_event(
            Event(
                "content_access",
                actor,
                {"record": doc["doc_id"], "interaction": (doc.get("interaction") or {}).get("id")},
                reason=reason.strip(),
            )
        )
        reader = await self.reader()
        if reader.keyring is None:
            raise KeyUnavailable("no key ring")
        doc["content"] = decrypt(reader.keyring, doc)
        doc.pop("encrypted", None)
        return doc

    async def verify(
        self,
        since: float | None = None,
        until: float | None = None,
        instance: str | None = None,
        pinned: dict[str, Ed25519PublicKey] | None = None,
    ) -> VerifyReport:
        reader = await self.reader(pinned)
        base = self.instance.removesuffix(".cli")
        return await verify(
            reader.store,
            reader.public_key,
            since=since,
            until=until,
            instance=instance,
            writers=local_writers(self.settings, base),
        )


__all__ = ["AuditService", "KeyUnavailable", "RecordCorrupt", "open_store"]
