"""`sentinel audit verify --anchors` as an auditor runs it, against a real SeaweedFS with an Object Lock
bucket and a real RFC 3161 authority: a trail rewritten and re-signed with the real key verifies
without the anchors and fails with them, through the configured bucket or the auditor's own view of it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.support.anchors import Anchored, anchor_settings, anchored_trail, rewrite
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, free_ports
from tests.support.tsa import Tsa


@pytest.fixture
async def anchored(tmp_path: Path, seaweed: Seaweed, tsa: Tsa) -> AsyncIterator[Anchored]:
    async with anchored_trail(tmp_path / "data" / "audit", seaweed, tsa) as trail:
        yield trail


def configure(data_dir: Path, tsa: Tsa, anchor: dict[str, Any] | None) -> Path:
    audit: dict[str, Any] = {"verify_processes": 1, "timestamp": {"url": tsa.url, "certificates": [str(tsa.ca_path)]}}
    if anchor is not None:
        audit["anchor"] = anchor
    config = {"data_dir": str(data_dir), "upstream": {"url": "http://127.0.0.1:8000"}, "audit": audit}
    path = data_dir / "sentinel.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def sentinel(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`sentinel audit verify ARGS`, its output's whitespace collapsed (the console wraps long lines)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "AWS_"))}
    command = [sys.executable, "-m", "sentinel", "audit", "verify", *args, "--config", str(config)]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=clean | env, timeout=120
    )
    if "--json" not in args:
        done.stdout = " ".join(done.stdout.split())
    done.stderr = " ".join(done.stderr.split())
    return done


async def test_verify_against_the_anchors_finds_a_rewrite_re_signed_with_the_real_key(
    anchored: Anchored, seaweed: Seaweed, tsa: Tsa, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    config = configure(data_dir, tsa, anchor_settings(seaweed, anchored.bucket))
    intact = await sentinel(config, "--anchors")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert f"Anchors: verified against 5 checkpoints anchored in s3://{anchored.bucket}/anchors/" in intact.stdout
    assert "1 time-stamped by CN=Sentinel Test Root CA (RFC 3161); node-a up to 29, time-stamped 20" in intact.stdout
    every = await sentinel(config, "--anchors", "--every-anchor")
    assert every.returncode == 0, every.stdout + every.stderr
    assert "every note's signature checked, 5 time-stamped by CN=Sentinel Test Root CA (RFC 3161)" in every.stdout

    rewrite(anchored.trail.store.path, "node-a", 3, anchored.signer())
    local = await sentinel(config)
    assert local.returncode == 0 and "Audit trail: intact" in local.stdout, local.stdout + local.stderr

    found = await sentinel(config, "--anchors")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "ANCHOR_MISMATCH seq 8: the checkpoint anchored for the first 8 records" in found.stdout
    assert "Audit trail: 1 problem(s)" in found.stdout

    # An auditor's own view of the bucket: its URL and endpoint, credentials from the environment.
    own = await sentinel(
        configure(data_dir, tsa, None),
        "--anchors",
        f"s3://{anchored.bucket}/anchors",
        "--anchor-endpoint",
        seaweed.endpoint,
        "--json",
        "--every-anchor",
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
    )
    assert own.returncode == 1, own.stdout + own.stderr
    report = orjson.loads(own.stdout)
    assert report["ok"] is False
    assert [(f["kind"], f["seq"]) for f in report["instances"][0]["findings"]] == [("anchor_mismatch", 8)]
    assert (report["anchors"]["anchored"], report["anchors"]["signatures_checked"]) == (5, 5)
    assert (report["anchors"]["every_note_read"], report["anchors"]["time_stamped"]) == (True, 5)
    assert report["anchors"]["chains"][0]["instance"] == "node-a" and report["anchors"]["chains"][0]["size"] == 29


async def test_anchor_findings_fail_the_check_and_usage_errors_are_status_2(
    anchored: Anchored, seaweed: Seaweed, tsa: Tsa, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    config = configure(data_dir, tsa, anchor_settings(seaweed, anchored.bucket))
    root = (await anchored.read()).roots["node-a"][15]
    anchored.owner.put_object(Bucket=anchored.bucket, Key=anchored.key(15, root), Body=b"written over")
    rewritten = await sentinel(config, "--anchors")
    assert rewritten.returncode == 1, rewritten.stdout + rewritten.stderr
    assert "ANCHOR_REWRITTEN node-a size 15:" in rewritten.stdout

    ranged = await sentinel(config, "--anchors", "--from", "7d")
    assert ranged.returncode == 2 and "it takes no --from or --to" in ranged.stderr
    unconfigured = await sentinel(configure(data_dir, tsa, None), "--anchors")
    assert unconfigured.returncode == 2 and "audit.anchor, which is not configured" in unconfigured.stderr
    alone = await sentinel(config, "--every-anchor")
    assert alone.returncode == 2 and "--every-anchor goes with --anchors" in alone.stderr
    not_s3 = await sentinel(config, "--anchors", "https://bucket/prefix")
    assert not_s3.returncode == 2 and "is not s3://BUCKET/PREFIX" in not_s3.stderr


async def test_an_anchor_bucket_that_cannot_be_read_is_status_2(
    anchored: Anchored, seaweed: Seaweed, tsa: Tsa, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    gone = anchor_settings(seaweed, anchored.bucket, endpoint_url=f"http://127.0.0.1:{port}")
    unreachable = await sentinel(configure(tmp_path / "data", tsa, gone), "--anchors")
    assert unreachable.returncode == 2, unreachable.stdout + unreachable.stderr
    assert "sentinel: cannot verify against the anchors: cannot reach the S3 anchor" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr and SECRET_KEY not in unreachable.stderr

    missing = anchor_settings(seaweed, "no-such-bucket")
    absent = await sentinel(configure(tmp_path / "data", tsa, missing), "--anchors")
    assert absent.returncode == 2 and "does not exist" in absent.stderr, absent.stderr
