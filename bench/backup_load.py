"""A backup that keeps running, to measure the proxy meanwhile (issue #5: "the proxy's added latency
while a backup runs").

Creates a synthetic model directory (random bytes, like weights) and a data dir with a backup key,
then runs `sentinel backup run bench` into a local target over and over, each run into an empty
target so every run chunks, hashes, encrypts and writes everything, until it is terminated. Each
run is a separate `sentinel` process at the niceness the scheduler gives scheduled runs
(`backup.nice`, default 10), unpinned, as a scheduled backup runs on the proxy's host.

    python bench/proxy.py --only c1 c64 --label during-backup --during "python bench/backup_load.py"
    python bench/backup_load.py --size-gib 0.5 --once      # one run, print its time
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backup import GIB, make_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--once", action="store_true", help="one run, then exit")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sentinel-backup-load-"))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        make_models(work / "models", int(args.size_gib * GIB), args.files)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
        env.update(
            SENTINEL_DATA_DIR=str(work / "data"),
            SENTINEL_LOG_LEVEL="warning",
            SENTINEL_BACKUP_TARGETS=json.dumps({"default": {"kind": "local", "path": str(work / "target")}}),
            SENTINEL_BACKUP_PLANS=json.dumps({"bench": {"sources": [{"kind": "path", "path": str(work / "models")}]}}),
        )
        cli = [sys.executable, "-m", "sentinel"]
        subprocess.run([*cli, "backup", "init-key"], env=env, check=True, capture_output=True)
        runs = 0
        while not stopping:
            shutil.rmtree(work / "target", ignore_errors=True)
            started = time.perf_counter()
            with subprocess.Popen([*cli, "backup", "run", "bench"], env=env, stdout=subprocess.DEVNULL) as child:
                os.setpriority(os.PRIO_PROCESS, child.pid, args.nice)
                while child.poll() is None:
                    if stopping:
                        child.terminate()
                    time.sleep(0.05)
            runs += 1
            print(f"run {runs}: {time.perf_counter() - started:.1f} s, exit {child.returncode}", flush=True)
            if args.once:
                break
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
