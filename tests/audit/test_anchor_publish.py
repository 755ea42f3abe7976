"""Checkpoints anchored as they are signed (issue #14): time-stamped by a real RFC 3161 authority (openssl,
tests/support/tsa.py) and published to a real SeaweedFS bucket under Object Lock; an anchor or an
authority that is down loses nothing (the spool keeps every checkpoint, pruning included, and the
next attempt publishes them in order), and strict mode refuses traffic once anchoring lags too long."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from prometheus_client import CollectorRegistry

from sentinel.audit.anchor.publish import AnchorMetrics, AnchorPublisher
from sentinel.audit.anchor.s3 import AnchorUnavailable, ObjectLockAnchor, ObjectLockAnchorSettings
from sentinel.audit.anchor.tsa import TimestampAuthority, TimestampError, TimestampTrust, verify_token
from sentinel.audit.trail import AuditJournal
from sentinel.proxy.exchange import Exchange
from sentinel.proxy.hooks import JournalUnavailable
from tests.audit.support import Trail, running_trail
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, free_ports
from tests.support.tsa import Tsa, running_tsa

ORIGIN = "sentinel/audit/node-a"
NOW = 4070908800.0  # 2099-01-01: retention dates must lie in the server's future


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tsa(tmp_path: Path) -> Iterator[Tsa]:
    with running_tsa(tmp_path / "tsa") as authority:
        yield authority


def anchor_at(endpoint: str, bucket: str) -> ObjectLockAnchor:
    settings = ObjectLockAnchorSettings(
        endpoint_url=endpoint,
        bucket=bucket,
        prefix="anchors",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        retention_days=30,
        max_attempts=1,
        connect_timeout=2,
    )
    return ObjectLockAnchor.from_settings(settings, clock=lambda: NOW)


def signed_notes(t: Trail) -> dict[int, bytes]:
    rows = t.spool.db.execute("SELECT seq, body FROM checkpoints ORDER BY seq").fetchall()
    return {int(seq): str(orjson.loads(body)["note"]).encode() for seq, body in rows}


async def test_every_checkpoint_is_stamped_and_anchored_in_order(tmp_path: Path, seaweed: Seaweed, tsa: Tsa) -> None:
    anchor = anchor_at(seaweed.endpoint, seaweed.bucket(lock=True))
    async with running_trail(tmp_path, checkpoint_every=7) as t:
        await t.write(30)
        await t.trail.stop()  # a final checkpoint at the head
        notes = signed_notes(t)
        assert list(notes) == [1, 8, 15, 22, 29, 30]
        metrics = AnchorMetrics(CollectorRegistry())
        publisher = AnchorPublisher(
            t.spool, anchor, metrics, timestamps=TimestampAuthority(tsa.url, tsa.ca_path), clock=Clock()
        )
        assert await publisher.publish_once() == 6
        assert (metrics.backlog, publisher.lag(), metrics.published._value.get()) == (0, 0.0, 6)
        anchored = await anchor.checkpoints(ORIGIN)
        assert [(c.size, c.note) for c in anchored] == list(notes.items())
        trust = TimestampTrust.from_pem(tsa.ca_path)
        for checkpoint in anchored:
            assert checkpoint.token is not None and not checkpoint.rewritten
            verify_token(checkpoint.note, checkpoint.token, trust)
        assert await publisher.publish_once() == 0  # nothing left: nothing published twice
    anchor.close()


async def test_an_unreachable_anchor_loses_nothing(tmp_path: Path, seaweed: Seaweed) -> None:
    (dead,) = free_ports(1)
    down = anchor_at(f"http://127.0.0.1:{dead}", "nowhere")
    up = anchor_at(seaweed.endpoint, seaweed.bucket(lock=True))
    clock = Clock()
    async with running_trail(tmp_path, checkpoint_every=7) as t:
        await t.write(20)
        metrics = AnchorMetrics(CollectorRegistry())
        publisher = AnchorPublisher(t.spool, down, metrics, clock=clock)
        with pytest.raises(AnchorUnavailable):
            await publisher.publish_once()
        await publisher.refresh()
        assert metrics.backlog == 3  # checkpoints at 1, 8 and 15
        clock.now = max(float(orjson.loads(b)["time"]) for (b,) in t.spool.db.execute("SELECT body FROM checkpoints"))
        clock.now += 1000
        assert publisher.lag() >= 1000
        await t.ship()
        t.spool.prune(clock.now + 10**9)  # shipped, long past retention: waiting checkpoints stay
        assert [s for (s,) in t.spool.db.execute("SELECT seq FROM checkpoints ORDER BY seq")] == [1, 8, 15]
        publisher.anchor = up
        assert await publisher.publish_once() == 3
        assert [c.size for c in await up.checkpoints(ORIGIN)] == [1, 8, 15]
        assert (metrics.backlog, publisher.lag()) == (0, 0.0)
        t.spool.prune(clock.now + 10**9)  # anchored now: only the newest checkpoint is kept
        assert [s for (s,) in t.spool.db.execute("SELECT seq FROM checkpoints")] == [15]
    down.close()
    up.close()


async def test_without_anchoring_pruning_keeps_no_checkpoint_waiting_for_it(tmp_path: Path) -> None:
    """No anchor configured: checkpoints (all carrying notes) are pruned like records, or the spool
    would grow by one checkpoint per interval forever."""
    async with running_trail(tmp_path, checkpoint_every=7) as t:
        await t.write(20)
        await t.ship()
        t.spool.prune(NOW + 10**9, anchoring=False)
        assert [s for (s,) in t.spool.db.execute("SELECT seq FROM checkpoints")] == [15]


async def test_a_time_stamping_authority_that_is_down_holds_the_checkpoint_back(
    tmp_path: Path, seaweed: Seaweed, tsa: Tsa
) -> None:
    anchor = anchor_at(seaweed.endpoint, seaweed.bucket(lock=True))
    async with running_trail(tmp_path, checkpoint_every=7) as t:
        await t.write(3)
        metrics = AnchorMetrics(CollectorRegistry())
        publisher = AnchorPublisher(t.spool, anchor, metrics, timestamps=TimestampAuthority(tsa.url, tsa.ca_path))
        tsa.status = 503
        with pytest.raises(TimestampError):
            await publisher.publish_once()
        assert await anchor.checkpoints(ORIGIN) == []  # never anchored without its token
        tsa.status = 200
        assert await publisher.publish_once() == 1
        (anchored,) = await anchor.checkpoints(ORIGIN)
        assert anchored.token is not None
    anchor.close()


async def test_strict_mode_refuses_while_anchoring_lags_past_the_bound(tmp_path: Path) -> None:
    async with running_trail(tmp_path) as t:
        lag = [100.0]
        t.trail.anchor_lag, t.trail.anchor_lag_max = (lambda: lag[0]), 900.0
        journal = AuditJournal(t.trail, instance="node-a")
        lag[0] = 901.0
        with pytest.raises(JournalUnavailable, match="not been anchored for 901 s"):
            await journal.begin(cast(Exchange, cast(Any, None)))
        assert t.metrics.refused._value.get() == 1
