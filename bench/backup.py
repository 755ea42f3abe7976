"""Backup and restore throughput against plain boto3 and restic, on the same data and the same SeaweedFS.

Builds a synthetic model directory (random bytes, incompressible like weights), starts a real
SeaweedFS on 127.0.0.1, then in one run measures:

  plain boto3   upload_file / download_file of the same files (default TransferConfig: multipart,
                10 threads): the ceiling for this machine and server
  sentinel      `sentinel backup run` (a separate process, as the scheduler runs it), a second run
                of the unchanged directory, and `sentinel backup restore`
  restic        (Debian package, if installed) init, backup, second backup, restore

Targets (issue #5): Sentinel's backup and restore throughput >= 80% of plain boto3; the second
backup of an unchanged directory uploads < 1% of the bytes and takes seconds, not minutes.

    python bench/backup.py                    # 2 GiB in 4 files
    python bench/backup.py --size-gib 16 --files 8 --workdir /big/disk
    python bench/backup.py --object-lock      # both on Object Lock buckets, Sentinel with COMPLIANCE retention
Results: bench/results/backup-<time>.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, running_seaweed  # noqa: E402

GIB = 1024**3
MIB = 1024**2


def make_models(root: Path, size: int, files: int) -> None:
    per_file = size // files
    block = 64 * MIB
    for i in range(files):
        path = root / "deepseek-bench" / f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            left = per_file
            while left > 0:
                n = min(block, left)
                handle.write(os.urandom(n))
                left -= n
    (root / "deepseek-bench" / "config.json").write_text('{"architectures": ["DeepseekV3ForCausalLM"]}')


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{result.stdout}\n{result.stderr}")
    return took


def plain_boto3(seaweed: Seaweed, models: Path, scratch: Path, lock: bool = False) -> dict[str, float]:
    from boto3.s3.transfer import TransferConfig

    client = seaweed.client(max_pool_connections=16)
    bucket = seaweed.bucket(lock=lock)
    files = [p for p in sorted(models.rglob("*")) if p.is_file()]
    config = TransferConfig()
    start = time.perf_counter()
    for path in files:
        client.upload_file(str(path), bucket, path.relative_to(models).as_posix(), Config=config)
    upload = time.perf_counter() - start
    start = time.perf_counter()
    for path in files:
        out = scratch / path.relative_to(models)
        out.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, path.relative_to(models).as_posix(), str(out), Config=config)
    download = time.perf_counter() - start
    shutil.rmtree(scratch)
    return {"upload_s": upload, "download_s": download}


def sentinel(
    seaweed: Seaweed, models: Path, work: Path, settings: dict[str, str], lock: bool = False
) -> dict[str, Any]:
    data = work / "sentinel-data"
    bucket = seaweed.bucket(lock=lock)
    retention = {"object_lock_mode": "COMPLIANCE", "object_lock_days": 1} if lock else {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.update(
        SENTINEL_DATA_DIR=str(data),
        SENTINEL_LOG_LEVEL="warning",
        SENTINEL_BACKUP_TARGETS=json.dumps({"default": seaweed.target_settings(bucket, **retention)}),
        SENTINEL_BACKUP_PLANS=json.dumps({"bench": {"sources": [{"kind": "path", "path": str(models)}]}}),
    )
    env.update(settings)
    cli = [sys.executable, "-m", "sentinel"]
    timed([*cli, "backup", "init-key"], env)
    first = timed([*cli, "backup", "run", "bench"], env)
    second = timed([*cli, "backup", "run", "bench"], env)
    with sqlite3.connect(data / "backup" / "state.db") as conn:
        rows = conn.execute(
            "SELECT finished - started, size, uploaded FROM runs WHERE kind = 'backup' ORDER BY id"
        ).fetchall()
    restore_dir = work / "sentinel-restore"
    restore = timed([*cli, "backup", "restore", "latest", "--target", str(restore_dir)], env)
    shutil.rmtree(restore_dir)
    return {
        "backup_s": first,
        "backup_inner_s": rows[0][0],
        "size_bytes": rows[0][1],
        "uploaded_bytes": rows[0][2],
        "second_backup_s": second,
        "second_inner_s": rows[1][0],
        "second_uploaded_bytes": rows[1][2],
        "restore_s": restore,
    }


def restic(seaweed: Seaweed, models: Path, work: Path) -> dict[str, Any] | None:
    binary = shutil.which("restic")
    if binary is None:
        return None
    bucket = seaweed.bucket()
    env = dict(
        os.environ,
        RESTIC_REPOSITORY=f"s3:{seaweed.endpoint}/{bucket}",
        RESTIC_PASSWORD="bench-only-password",
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        RESTIC_CACHE_DIR=str(work / "restic-cache"),
    )
    timed([binary, "init"], env)
    first = timed([binary, "backup", "--quiet", str(models)], env)
    second = timed([binary, "backup", "--quiet", str(models)], env)
    restore_dir = work / "restic-restore"
    restore = timed([binary, "restore", "latest", "--target", str(restore_dir)], env)
    shutil.rmtree(restore_dir)
    version = subprocess.run([binary, "version"], capture_output=True, text=True).stdout.split()[1]
    return {"version": version, "backup_s": first, "second_backup_s": second, "restore_s": restore}


def table(size: int, plain: dict[str, float], ours: dict[str, Any], other: dict[str, Any] | None) -> str:
    def rate(seconds: float) -> str:
        return f"{size / MIB / seconds:.0f} MiB/s"

    rows = [
        "| | backup | restore | second backup (unchanged) |",
        "|---|---|---|---|",
        f"| plain boto3 | {plain['upload_s']:.1f} s, {rate(plain['upload_s'])} | "
        f"{plain['download_s']:.1f} s, {rate(plain['download_s'])} | — |",
        f"| Sentinel | {ours['backup_s']:.1f} s, {rate(ours['backup_s'])} "
        f"({100 * plain['upload_s'] / ours['backup_s']:.0f}% of plain) | "
        f"{ours['restore_s']:.1f} s, {rate(ours['restore_s'])} "
        f"({100 * plain['download_s'] / ours['restore_s']:.0f}% of plain) | "
        f"{ours['second_backup_s']:.1f} s, {ours['second_uploaded_bytes']:,} bytes uploaded "
        f"({100 * ours['second_uploaded_bytes'] / size:.3f}%) |",
    ]
    if other:
        rows.append(
            f"| restic {other['version']} | {other['backup_s']:.1f} s, {rate(other['backup_s'])} | "
            f"{other['restore_s']:.1f} s, {rate(other['restore_s'])} | {other['second_backup_s']:.1f} s |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where the data and SeaweedFS live (needs ~4x size)."
    )
    parser.add_argument("--skip-restic", action="store_true")
    parser.add_argument("--object-lock", action="store_true", help="Object Lock buckets, Sentinel with retention.")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for Sentinel (repeatable)")
    args = parser.parse_args()
    size = int(args.size_gib * GIB)
    work = Path(tempfile.mkdtemp(prefix="sentinel-bench-backup-", dir=args.workdir))
    try:
        models = work / "models"
        print(f"writing {size / GIB:.1f} GiB of synthetic weights in {args.files} files ...", file=sys.stderr)
        make_models(models, size, args.files)
        with running_seaweed(work) as seaweed:
            print("plain boto3 ...", file=sys.stderr)
            plain = plain_boto3(seaweed, models, work / "plain-restore", lock=args.object_lock)
            print("sentinel ...", file=sys.stderr)
            settings = dict(item.partition("=")[::2] for item in args.env)
            ours = sentinel(seaweed, models, work, settings, lock=args.object_lock)
            other = None
            if not args.skip_restic:
                print("restic ...", file=sys.stderr)
                other = restic(seaweed, models, work)
        result = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "size_bytes": size,
            "files": args.files,
            "object_lock": args.object_lock,
            "cpus": os.cpu_count(),
            "plain_boto3": plain,
            "sentinel": ours,
            "restic": other,
        }
        out = HERE / "results" / f"backup-{time.strftime('%Y%m%dT%H%M%S')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(table(size, plain, ours, other))
        print(f"\nresults: {out}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
