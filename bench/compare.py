"""A/B: several builds or settings of Sentinel against the same mock upstream, in interleaved rounds.

Each variant is a `sentinel serve` of its own (all pinned to CPU 0 with the mock upstream; the
load generator and a null OTLP receiver on CPU 1), all started once and idle while another is
measured; rounds go A, B, C, A, B, C, ... so that a busy machine hurts every variant alike.
A variant is NAME=SOURCE, optionally followed by ,KEY=VALUE settings (an empty VALUE unsets KEY):
SOURCE is `.` (this working tree), a directory holding a `sentinel` package, or a git revision.

    python bench/compare.py before=07c3177 after=HEAD --stream -c 64 --rounds 5
    python bench/compare.py on=. off=.,SENTINEL_AUDIT_MODE=off -c 1 --direct

Reports the median over rounds of throughput, latency, time to first byte (all requests, and
without each connection's first request: `warm`), Sentinel's CPU per request (and its kernel
part, from /proc; counted until its queues and audit spool are drained) and the mock upstream's,
plus any dropped records.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from proxy import HERE, PY, STREAM_CHUNKS, free_port, loadgen, pinned, settle, wait_http

ROOT = HERE.parent


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def source_dir(source: str, scratch: Path, name: str) -> Path:
    if source == ".":
        return ROOT
    if Path(source, "sentinel").is_dir():
        return Path(source).resolve()
    target = scratch / name
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", source, "sentinel"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="NAME=SOURCE[,KEY=VALUE...]")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true", help="streamed answers (54 SSE chunks, 2 ms apart)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--direct", action="store_true", help="also measure the upstream without Sentinel")
    parser.add_argument("--prompt-bytes", type=int, default=200)
    parser.add_argument(
        "--upstream-nice",
        type=int,
        default=0,
        help="run the mock model server at this nice value: a lower CPU weight than Sentinel's on their "
        "shared core (docs/benchmarks.md, *Why single bursts vary*); 0, the default, is issue #2's layout",
    )
    args = parser.parse_args()

    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="sentinel-compare-"))
        stack.callback(shutil.rmtree, scratch, True)

        def spawn(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
            process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
            stack.callback(process.wait, 30)
            stack.callback(process.terminate)
            return process

        upstream_port, otlp_port = free_port(), free_port()
        mock = [PY, str(HERE / "upstream.py"), "--port", str(upstream_port), "--pace-ms", "2"]
        if args.upstream_nice:
            mock = ["nice", "-n", str(args.upstream_nice), *mock]
        upstream = spawn(pinned(0, mock))
        spawn(pinned(1, [PY, str(HERE / "otlp_sink.py"), "--port", str(otlp_port)]))
        targets: list[dict[str, object]] = []
        if args.direct:
            targets.append({"name": "direct", "port": upstream_port, "process": None, "rounds": []})
        for spec in args.variants:
            name, _, rest = spec.partition("=")
            source, *settings = rest.split(",")
            port, admin = free_port(), free_port()
            code = source_dir(source, scratch, name)
            env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
            env.update(
                {
                    "PYTHONPATH": str(code),
                    "SENTINEL_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}",
                    "SENTINEL_PORT": str(port),
                    "SENTINEL_ADMIN_PORT": str(admin),
                    "SENTINEL_DATA_DIR": str(scratch / f"data-{name}"),
                    "SENTINEL_LOG_LEVEL": "warning",
                    "SENTINEL_TRACING_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}/v1/traces",
                    "SENTINEL_SINKS_JSONL_PATH": "interactions.jsonl",
                }
            )
            for setting in settings:
                key, _, value = setting.partition("=")
                if value:
                    env[key] = value
                else:
                    env.pop(key, None)
            # `python -m` puts the working directory first on sys.path: run from the variant's code.
            process = spawn(pinned(0, [PY, "-m", "sentinel", "serve"]), env=env, cwd=code)
            targets.append({"name": name, "port": port, "admin": admin, "process": process, "rounds": []})
        for target in targets:
            if target["process"] is not None:
                wait_http(f"http://127.0.0.1:{target['admin']}/healthz")
        time.sleep(1.0)

        for number in range(args.rounds):
            for target in targets:
                process = target["process"]
                url = f"http://127.0.0.1:{target['port']}/v1/chat/completions"
                before = cpu_split(process.pid) if isinstance(process, subprocess.Popen) else (0.0, 0.0)
                upstream_before = sum(cpu_split(upstream.pid))
                run = loadgen(url, args.concurrency, args.seconds, args.stream, args.prompt_bytes)
                if target["process"] is not None:
                    run["settle_s"] = settle(f"http://127.0.0.1:{target['admin']}")  # include the work left behind
                count = max(1, run["requests"])
                after = cpu_split(process.pid) if isinstance(process, subprocess.Popen) else (0.0, 0.0)
                run["cpu_us"] = (sum(after) - sum(before)) / count * 1e6
                run["sys_us"] = (after[1] - before[1]) / count * 1e6
                run["upstream_cpu_us"] = (sum(cpu_split(upstream.pid)) - upstream_before) / count * 1e6
                target["rounds"].append(run)  # type: ignore[attr-defined]
                print(f"round {number + 1} {target['name']:>10}: {line(run, args.stream)}", flush=True)

        print("\nmedians:")
        for target in targets:
            rounds: list[dict[str, float]] = target["rounds"]  # type: ignore[assignment]
            median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            print(f"{target['name']:>10}: {line(median, args.stream)}")
        for target in targets:
            if target["process"] is None:
                continue
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{target['admin']}/metrics").read().decode()
            dropped = [
                row
                for row in metrics.splitlines()
                if row.startswith(("sentinel_recorder_dropped_total", "sentinel_sink_dropped_total"))
                and not row.endswith(" 0.0")
            ]
            if dropped:
                print(f"{target['name']}: DROPPED {dropped}")
    sys.stdout.flush()


def line(run: dict[str, float], stream: bool) -> str:
    text = (
        f"{run['rps']:7.0f}/s  p50/p99 {run['p50_ms']:7.2f}/{run['p99_ms']:7.2f} ms  "
        f"ttfb p50/p99 {run['ttfb_p50_ms']:5.2f}/{run['ttfb_p99_ms']:6.2f} ms "
        f"(warm p99 {run['ttfb_p99_warm_ms']:5.2f}, cold p50/max {run['ttfb_p50_cold_ms']:5.2f}/"
        f"{run['ttfb_max_cold_ms']:5.2f})  "
        f"cpu {run['cpu_us']:5.0f} us/req (kernel {run['sys_us']:4.0f})  upstream {run['upstream_cpu_us']:4.0f}"
    )
    if stream:
        text += f"  = {run['cpu_us'] / STREAM_CHUNKS:4.1f} us/chunk"
    return text


if __name__ == "__main__":
    main()
