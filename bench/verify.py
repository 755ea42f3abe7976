"""Verification at scale (issue #21): `sentinel audit verify`, a restore drill and a report over a store
made by `bench/audit_store.py`, each as an operator runs it (a real process), timed, with its peak RSS.

    python bench/audit_store.py --records 1000000 --out /tmp/gen1m
    python bench/verify.py --store /tmp/gen1m                    # verify, one process and one per CPU
    python bench/verify.py --store /tmp/gen1m --drill --report   # also a backup + drill, and a report

Peak RSS is the largest single process (the CLI or one of its worker processes), as the kernel counts
it for waited-for descendants (`RUSAGE_CHILDREN`): each run is measured in a fresh child of this script.
Targets: >= 150,000 records/s on this 2-core machine (1M in <= 7 s), peak RSS <= 256 MB whatever the
chain length; a report over 1M records in < 30 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _measure(argv: list[str], env: dict[str, str], queue: Any) -> None:
    """In a fresh process: run the command, report wall time, exit status and the peak RSS under it."""
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    queue.put({"seconds": seconds, "rc": done.returncode, "peak_rss_mb": peak_kib / 1024, "tail": done.stdout[-400:]})


def measure(argv: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    queue: Any = multiprocessing.Queue()
    child = multiprocessing.Process(target=_measure, args=(argv, env, queue))
    child.start()
    result: dict[str, Any] = queue.get()
    child.join()
    return result


def sentinel(*args: str) -> list[str]:
    return [sys.executable, "-m", "sentinel", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="a data directory made by bench/audit_store.py")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 0], help="0: the default (one per CPU)")
    parser.add_argument("--drill", action="store_true", help="also back up the store and run a restore drill")
    parser.add_argument("--report", action="store_true", help="also issue a JSON report over the whole period")
    args = parser.parse_args()
    config = str(args.store / "sentinel.yaml")
    generated = json.loads((args.store / "generated.json").read_text())
    records = int(generated.get("records_total") or generated.get("records") or 0)
    rows: list[dict[str, Any]] = []

    def run(name: str, argv: list[str], count: int) -> None:
        result = measure(argv)
        result.update(name=name, records=count, records_per_s=count / result["seconds"] if count else None)
        rows.append(result)
        rate = f"{result['records_per_s']:>10,.0f} records/s" if count else ""
        print(
            f"{name:<28} {result['seconds']:7.2f} s {rate}  peak RSS {result['peak_rss_mb']:6.0f} MB  "
            f"exit {result['rc']}",
            flush=True,
        )

    for processes in args.processes:
        extra = ["--processes", str(processes)] if processes else []
        run(
            f"audit verify (processes={processes or 'CPUs'})",
            sentinel("audit", "verify", "--config", config, *extra),
            records,
        )
    if args.drill:
        if not (args.store / "keys" / "backup.key").exists():
            subprocess.run(sentinel("backup", "init-key", "--config", config), check=True, capture_output=True)
        run("backup run (every plan)", sentinel("backup", "run", "--config", config), 0)
        run("drill run (restore + verify)", sentinel("drill", "run", "--config", config), records)
    if args.report:
        out = args.store / "bench-report.json"
        days = float(generated.get("days", 30)) + 1
        run("report (json)", sentinel("report", "--config", config, "--from", f"{days:g}d", "-o", str(out)), records)
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"verify-{time.strftime('%Y%m%dT%H%M%S')}.json"
    target.write_text(json.dumps({"store": str(args.store), "generated": generated, "runs": rows}, indent=2))
    print(f"results: {target}")


if __name__ == "__main__":
    main()
