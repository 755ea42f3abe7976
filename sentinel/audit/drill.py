"""The audit trail's restore-drill check: a restored audit store must verify and decrypt.

Plugged into restore drills by `backup.plans.<plan>.drill.checks: ["sentinel.audit.drill:audit_trail_check"]`
(the default plan has it). On every restored SQLite database that is an audit store it re-verifies
every hash chain against its signed checkpoints (against the pinned keys of `audit.pinned_keys`, a
signing key in the restored store that is not pinned failing the drill; without pins, against the
restored store's own keys, and the result says so) and, when `audit.anchor` is configured, against the
checkpoints anchored there up to the restored records (docs/anchors.md), decrypts a sample of records with the
deployment's key-encryption key (which is never in the backup: the drill proves the backup *plus*
the separately kept KEK restore the trail), and reports the newest record's time for the RPO.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from sentinel.audit.anchor.check import NOT_ANCHORED, AnchorReading, read_configured
from sentinel.audit.anchor.s3 import AnchorError
from sentinel.audit.kek import KeyUnavailable, LocalKeyFile
from sentinel.audit.keyring import KeyRing
from sentinel.audit.pins import PinFileError, Pins, TrustedKeys, configured_pins, trusted_keys
from sentinel.audit.record import RecordCorrupt, decrypt
from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.audit.verify import verify
from sentinel.backup.checks import CheckResult
from sentinel.backup.snapshot import Snapshot
from sentinel.config import Settings


def _is_audit_store(path: Path) -> bool:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return {"records", "keys", "checkpoints"} <= tables


class AuditTrailCheck:
    name = "audit trail"

    def __init__(self, settings: Settings, sample: int = 25) -> None:
        self.settings = settings
        self.sample = sample

    def run(self, restored: Path, snapshot: Snapshot) -> CheckResult:
        stores = [
            restored / source.name / str(source.meta.get("database", "store.db"))
            for source in snapshot.sources
            if source.kind == "sqlite" and not source.meta.get("missing")
        ]
        stores = [path for path in stores if path.exists() and _is_audit_store(path)]
        if not stores:
            return CheckResult(self.name, True, "no audit store in this snapshot")
        try:
            pins = configured_pins(self.settings)
        except PinFileError as exc:
            return CheckResult(self.name, False, f"cannot verify the restored trail: {exc}")
        results: list[CheckResult] = []
        # Drills may run inside an event loop (the scheduler in `serve`): give asyncio its own thread.
        worker = threading.Thread(target=lambda: results.extend(asyncio.run(self._check(p, pins)) for p in stores))
        worker.start()
        worker.join()
        passed = all(r.passed for r in results)
        newest = max((r.newest_record for r in results if r.newest_record is not None), default=None)
        evidence = {
            "trusted_keys": [r.evidence["keys"] for r in results],
            "anchors": [r.evidence["anchors"] for r in results],
        }
        return CheckResult(self.name, passed, "; ".join(r.detail for r in results), newest, evidence)

    async def _check(self, path: Path, pins: Pins | None) -> CheckResult:
        store = EmbeddedStore(path, read_only=True)
        await store.open()
        try:
            trusted = await trusted_keys(store, pins)
            origin = trusted.log_origin(self.settings.audit.log_origin)
            anchors, anchored, heads = await self._anchors(store, trusted.keys, origin)
            report = await verify(
                store,
                trusted,
                page=self.settings.audit.verify_page,
                processes=self.settings.audit.processes(),
                anchored=anchored,
                log_origin=origin if anchored is not None else None,
                anchored_before=time.time() - self.settings.audit.anchor_lag_max if anchored is not None else None,
            )
            problems = [f"{k.kind} {k.kid}: {k.detail}" for k in trusted.findings]
            if isinstance(anchors, str):
                problems.append(anchors)
            elif anchors is not None:
                problems += [f"{f.kind} at {f.instance}:{f.seq} (anchored)" for f in anchors.findings]
            problems += [f"{f.kind} at {f.instance}:{f.seq}" for f in report.findings]
            verified = len(problems) == 0
            rows = await self._sample(store)
            newest_rows = await store.execute("SELECT MAX(recorded_at) FROM records")
            newest = newest_rows[0][0] if newest_rows else None
            try:
                keks = LocalKeyFile.load(self.settings.resolve_path(self.settings.key_file))
                ring = KeyRing(keks, keys=await store.keys())
                for (body,) in rows:
                    decrypt(ring, orjson.loads(body))
                decrypted = f"{len(rows)} sampled records decrypt"
            except (KeyUnavailable, RecordCorrupt) as exc:
                problems.append(f"decryption failed: {exc}")
                decrypted = "decryption FAILED"
        finally:
            await store.close()
        detail = (
            f"{path.parent.name}: {report.records_checked} records in {len(report.instances)} chain(s) "
            f"{'verify' if verified else 'DO NOT verify'}, {_trust(trusted)}, {_anchored(anchors, anchored)}; "
            f"{decrypted}"
        )
        if problems:
            detail += " (" + "; ".join(problems[:5]) + ")"
        against = anchors.to_dict() if isinstance(anchors, AnchorReading) else {"statement": anchors or NOT_ANCHORED}
        evidence = {
            "keys": {"store": path.parent.name} | trusted.to_dict(),
            "anchors": {"store": path.parent.name, "configured": anchors is not None, "restored_heads": heads}
            | against,
        }
        return CheckResult(self.name, not problems, detail, newest, evidence)

    async def _anchors(
        self, store: EmbeddedStore, keys: dict[str, Any], origin: str
    ) -> tuple[AnchorReading | str | None, dict[str, dict[int, bytes]] | None, dict[str, int]]:
        """The configured anchors (None: none; a string: why they could not be read), the roots to verify the
        restored chains by, and the chains' restored heads. A backup is older than the anchors: only what was
        anchored up to each restored chain's newest record is compared."""
        heads = {}
        for name in await store.instances():
            bounds = await store.seq_range(name, None, None)
            if bounds is not None:
                heads[name] = bounds[1]
        try:
            reading = await read_configured(self.settings, keys, expected=sorted(heads), log_origin=origin)
        except (AnchorError, ValueError) as exc:
            return f"cannot verify against the anchors: {exc}", None, heads
        return reading, reading.within(heads) if reading is not None else None, heads

    async def _sample(self, store: EmbeddedStore) -> list[tuple[Any, ...]]:
        """Up to `sample` interaction records at random rowids: index lookups, not a sort of every body."""
        bounds = await store.execute("SELECT MIN(rowid), MAX(rowid) FROM records")
        low, high = bounds[0] if bounds and bounds[0][0] is not None else (0, -1)
        picks = sorted({random.randint(low, high) for _ in range(4 * self.sample)}) if high >= low else []
        rows: list[tuple[Any, ...]] = []
        for rowid in picks:
            rows += await store.execute(
                "SELECT body FROM records WHERE rowid >= ? AND kind = 'interaction' ORDER BY rowid LIMIT 1", (rowid,)
            )
            if len(rows) >= self.sample:
                break
        return rows


def _trust(trusted: TrustedKeys) -> str:
    """Which keys the drill trusted, as its result says it."""
    if trusted.pins is not None:
        return f"against the keys pinned in {trusted.pins.describe()}"
    return "against the signing keys stored in the restored store itself (not pinned: set audit.pinned_keys)"


def _anchored(anchors: AnchorReading | str | None, anchored: dict[str, dict[int, bytes]] | None) -> str:
    """Against what anchors the drill verified, as its result says it."""
    if anchors is None:
        return "not against anchors (audit.anchor is not configured)"
    if isinstance(anchors, str):
        return "NOT against the anchors (they could not be read)"
    compared = sum(len(roots) for roots in (anchored or {}).values())
    if compared == anchors.anchored:
        return anchors.statement().removeprefix("verified ")
    return (
        f"against the {compared} up to the restored records, of {anchors.statement().removeprefix('verified against ')}"
    )


def audit_trail_check(plan: str, settings: Settings) -> AuditTrailCheck:
    """Factory for `drill.checks` (see sentinel.backup.checks.load_check)."""
    return AuditTrailCheck(settings)
