"""Anchoring at scale (issue #14): every checkpoint of a generated trail published to a real SeaweedFS
bucket under Object Lock, then `sentinel audit verify --anchors` over it, timed as an operator runs it.

    python bench/audit_store.py --records 1000000 --out /tmp/gen1m
    python bench/anchors.py --store /tmp/gen1m [--every-anchor]

The store's checkpoints carry their C2SP notes (the generator signs them as the trail does); they are
published with `ObjectLockAnchor.publish`, 16 at a time, then the CLI runs in a fresh process with the
anchor configured (a copy of the data directory's config), and its time and peak RSS are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sentinel.audit.anchor.s3 import ObjectLockAnchor  # noqa: E402
from sentinel.audit.settings import ObjectLockAnchorSettings  # noqa: E402
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, running_seaweed  # noqa: E402


async def publish_all(anchor: ObjectLockAnchor, notes: list[tuple[int, str]], concurrency: int = 16) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(size: int, note: str) -> None:
        async with gate:
            origin = note.split("\n", 1)[0]
            await anchor.publish(origin, size, note.encode())

    await asyncio.gather(*(one(size, note) for size, note in notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="a data directory made by bench/audit_store.py")
    parser.add_argument(
        "--every-anchor", action="store_true", help="also time --every-anchor (every note and token read)"
    )
    args = parser.parse_args()
    db = sqlite3.connect(f"file:{args.store / 'audit' / 'store.db'}?mode=ro", uri=True)
    rows = db.execute("SELECT seq, body FROM checkpoints").fetchall()
    db.close()
    notes = [(int(seq), note) for seq, body in rows if (note := orjson.loads(body).get("note"))]
    with tempfile.TemporaryDirectory() as scratch, running_seaweed(Path(scratch)) as seaweed:
        bucket = seaweed.bucket(lock=True)
        settings = {
            "endpoint_url": seaweed.endpoint,
            "bucket": bucket,
            "prefix": "anchors",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "retention_days": 1,
        }
        anchor = ObjectLockAnchor.from_settings(ObjectLockAnchorSettings(**settings))
        began = time.perf_counter()
        asyncio.run(publish_all(anchor, notes))
        published = time.perf_counter() - began
        anchor.close()
        config = yaml.safe_load((args.store / "sentinel.yaml").read_text())
        config.setdefault("audit", {})["anchor"] = settings
        anchored_config = Path(scratch) / "sentinel.yaml"
        anchored_config.write_text(yaml.safe_dump(config))
        result: dict[str, object] = {
            "checkpoints_published": len(notes),
            "publish_s": round(published, 2),
            "publish_per_s": round(len(notes) / published, 1),
        }
        runs = {"verify_anchors": ["--anchors"]}
        if args.every_anchor:
            runs["verify_every_anchor"] = ["--anchors", "--every-anchor"]
        for name, flags in runs.items():
            command = [sys.executable, "-m", "sentinel", "audit", "verify", *flags, "--config", str(anchored_config)]
            began = time.perf_counter()
            run = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - began
            # ru_maxrss of children is the largest of any child so far: runs go from the lighter one up.
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            result |= {
                f"{name}_s": round(seconds, 2),
                f"{name}_exit": run.returncode,
                f"{name}_peak_rss_mib": round(peak, 1),
                f"{name}_tail": run.stdout.strip().splitlines()[-3:],
            }
            if run.returncode:
                print(run.stderr[-2000:], file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
