"""How many audit records per second one core can encrypt, chain and make durable.

Feeds interactions with a 4 KB prompt (and a 1 KB answer) to the real `AuditTrail` over a real
SQLite spool (`synchronous=FULL`: an fsync per group commit), with `--concurrency` appends in
flight as a busy proxy would have, and reports records/s and commit sizes. The whole process,
spool thread included, is pinned to one CPU.

    python bench/audit.py --records 20000 --concurrency 64

For the proxy with the audit trail off / best_effort / strict, see bench/proxy.py:

    python bench/proxy.py --only c1 c64 --env SENTINEL_AUDIT_MODE=off --label audit-off
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import KeyRing
from sentinel.audit.record import INTERACTION
from sentinel.audit.spool import Spool
from sentinel.audit.trail import AuditMetrics, AuditTrail, Entry
from sentinel.interaction import Caller, Interaction, Usage


def interaction(n: int, prompt: str, answer: str) -> Interaction:
    return Interaction(
        id=f"bench-{n}",
        started_at=time.time(),
        method="POST",
        path="/v1/chat/completions",
        model_requested="deepseek-r1",
        model_returned="deepseek-r1",
        stream=True,
        sampling={"temperature": 0.6, "max_tokens": 1024},
        caller=Caller(user=f"dify-user-{n % 50}", api_key_id="key-0123456789ab", address="10.0.0.7"),
        request_messages=[{"role": "system", "content": "You are helpful."}, {"role": "user", "content": prompt}],
        response_text=answer,
        reasoning_text=answer[:256],
        usage=Usage(1000, 250, 1250, 64, "usage"),
        ttft_s=0.2,
        duration_s=3.1,
        status_code=200,
        upstream_status=200,
        request_bytes=4300,
        response_bytes=9000,
    )


async def run(records: int, concurrency: int, prompt_bytes: int, directory: Path) -> dict[str, float]:
    spool = Spool(directory / "spool.db", synchronous="FULL")
    await spool.run(spool.open)
    keyring = KeyRing(LocalKeyFile.create(directory / "kek.key"), spool)
    metrics = AuditMetrics(CollectorRegistry())
    trail = AuditTrail(spool, "bench", metrics, checkpoint_every=1000, checkpoint_interval=300)
    await trail.start(keyring)
    prompt = ("The patient reports intermittent chest pain. " * 200)[:prompt_bytes]
    answer = ("Consider an ECG and troponin levels. " * 40)[:1024]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(records):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            await trail.append([Entry(INTERACTION, interaction=interaction(n, prompt, answer))])

    started = time.perf_counter()
    cpu_before = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    await trail.stop()
    spool.close()
    batches = metrics.batch_size.collect()[0].samples
    commits = next(s.value for s in batches if s.name.endswith("_count"))
    return {
        "records": records,
        "seconds": elapsed,
        "records_per_second": records / elapsed,
        "cpu_us_per_record": cpu / records * 1e6,
        "commits": commits,
        "records_per_commit": records / commits,
        "spool_bytes_per_record": (directory / "spool.db").stat().st_size / records,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--prompt-bytes", type=int, default=4096)
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: don't pin)")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    import uvloop

    with tempfile.TemporaryDirectory(prefix="sentinel-audit-bench-", dir=os.getcwd()) as scratch:
        result = uvloop.run(run(args.records, args.concurrency, args.prompt_bytes, Path(scratch)))
    for key, value in result.items():
        print(f"{key:>24}: {value:,.1f}")


if __name__ == "__main__":
    main()
