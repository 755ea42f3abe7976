"""Compliance report over a large embedded audit store: time and peak memory (issue #6).

Generates (once, kept in --workdir) a data directory with an embedded store of --records interaction
records over 30 days with realistic distributions (bench/audit_store.py: sealed by the real record
and chain code, encrypted under real keys, signed checkpoints, ~4.8 KB per record), then times in
this process:

  gather     every section: store-side aggregations and, alongside them, the windowed chain
             verification with the encryption/PHI census over every record of the period
  verify     the chain verification alone, for comparison
  render     JSON, HTML (with SVG charts) and PDF from the gathered report

Target: the report over 1,000,000 records in under 30 s, memory bounded (peak RSS does not grow
with the store: verification holds one window of `audit.verify_page` records at a time).

    python bench/report.py                         # 1,000,000 records in /tmp/sentinel-report-bench
    python bench/report.py --records 100000 --workdir /big/disk
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sys
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from audit_store import generate  # noqa: E402

from sentinel.audit.store.embedded import EmbeddedStore  # noqa: E402
from sentinel.config import load_settings  # noqa: E402
from sentinel.report.gather import ReportInputs, gather  # noqa: E402
from sentinel.report.integrity import verify_period  # noqa: E402
from sentinel.report.issue import open_reader, public_keys  # noqa: E402
from sentinel.report.model import Period  # noqa: E402
from sentinel.report.render import render  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(data_dir: Path, period: Period, only_verify: bool) -> dict[str, float]:
    settings = load_settings(data_dir / "sentinel.yaml")
    store = EmbeddedStore(settings.resolve_path(settings.audit.store_path), read_only=True)
    await store.open()
    keys = await store.keys()
    results: dict[str, float] = {}
    try:
        if only_verify:
            began = time.perf_counter()
            result = await verify_period(
                store,
                public_keys(keys),
                period,
                burst_window=settings.report.error_burst_window,
                listed=("content_access", "content_export", "admin_auth_failed"),
                window=settings.audit.verify_page,
                processes=settings.audit.processes(),
            )
            results["verify_s"] = time.perf_counter() - began
            results["verified"] = result.records_checked
            return results
        async with open_reader(store) as reader:
            inputs = ReportInputs(settings, reader, period, public_keys(keys), keys, "bench")
            began = time.perf_counter()
            report = await gather(inputs)
            results["gather_s"] = time.perf_counter() - began
        results["gather_peak_mib"] = peak_mib()
        results["calls"] = report["activity"]["totals"]["calls"]
        results["verified"] = report["integrity"]["records_checked"]
        results["findings"] = len(report["findings"])
        for fmt in ("json", "html", "pdf"):
            began = time.perf_counter()
            body = render(report, fmt)  # type: ignore[arg-type]
            results[f"render_{fmt}_s"] = time.perf_counter() - began
            results[f"{fmt}_bytes"] = len(body)
    finally:
        await store.close()
    results["peak_mib"] = peak_mib()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sentinel-report-bench"))
    parser.add_argument("--verify-only", action="store_true", help="time the chain verification alone")
    args = parser.parse_args()
    data_dir = args.workdir / f"store-{args.records}"
    manifest = data_dir / "generated.json"
    if not manifest.exists():
        if data_dir.exists():
            shutil.rmtree(data_dir)  # an interrupted generation
        made = generate(data_dir, args.records)
        print(
            f"generated {made.records:,} records ({made.store_bytes / 1e9:.2f} GB) in {made.seconds:.0f} s "
            f"({made.per_second:,.0f} records/s)"
        )
    end = float(orjson.loads(manifest.read_bytes())["end"])
    period = Period(end - 30 * 86400, end + 1)
    results = asyncio.run(run(data_dir, period, args.verify_only))
    store_path = data_dir / "audit" / "store.db"
    print(f"records: {args.records:,}; store: {store_path.stat().st_size / 1e9:.2f} GB")
    for key, value in results.items():
        print(f"  {key:16} {value:,.2f}" if isinstance(value, float) else f"  {key:16} {value:,}")


if __name__ == "__main__":
    main()
