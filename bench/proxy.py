"""Sentinel's own cost, measured against a direct connection in the same run.

Starts the fast mock upstream and Sentinel pinned to CPU 0 (`--upstream-cpu 1`: the mock upstream
on CPU 1 instead), a null OTLP receiver and the load generator on CPU 1, then runs each scenario
as interleaved rounds: direct, via Sentinel, direct, via Sentinel, ... Reports, per scenario,
latency percentiles both ways and their difference, requests (or streams) per second, time to
first byte, and Sentinel's CPU time per request.

    python bench/proxy.py                       # all scenarios, ~3 minutes
    python bench/proxy.py --rounds 1 --seconds 3 --only c1
    python bench/proxy.py --env SENTINEL_TRACING_EXPORTER=none --label no-tracing

Sentinel runs as `sentinel serve` with metrics, tracing (OTLP to the null receiver, 100% sampled)
and the JSON-lines sink on, unless `--env` says otherwise. Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
STREAM_CHUNKS = 54

SCENARIOS = {
    "c1": {"concurrency": 1, "stream": False},
    "c16": {"concurrency": 16, "stream": False},
    "c64": {"concurrency": 64, "stream": False},
    "stream64": {"concurrency": 64, "stream": True},
    "stream1": {"concurrency": 1, "stream": True},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def pinned(cpu: int, args: list[str]) -> list[str]:
    cpus = os.cpu_count() or 1
    return ["taskset", "-c", str(cpu), *args] if shutil.which("taskset") and cpus > 1 else args


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_BACKLOGS = ("sentinel_recorder_queue_depth", "sentinel_sink_queue_depth", "sentinel_audit_spool_records")


def settle(admin_url: str, timeout: float = 60.0) -> float:
    """Wait until Sentinel has recorded, written and shipped everything (its queues and the audit
    spool's unshipped records are empty), so a round's CPU time includes the work it left behind
    and the next round starts quiet. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        metrics = urllib.request.urlopen(admin_url + "/metrics").read().decode()
        waiting = [line for line in metrics.splitlines() if line.startswith(_BACKLOGS) and not line.endswith(" 0.0")]
        if not waiting:
            break
        time.sleep(0.2)
    return time.monotonic() - started


def sentinel_env(
    upstream_port: int, proxy_port: int, admin_port: int, otlp_port: int, data_dir: Path
) -> dict[str, str]:
    """The environment of a benchmarked `sentinel serve`: this one's, less any SENTINEL_ setting, plus
    the bench's ports, a scratch data directory, spans to the null OTLP receiver and the JSON-lines sink."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.update(
        {
            "SENTINEL_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}",
            "SENTINEL_PORT": str(proxy_port),
            "SENTINEL_ADMIN_PORT": str(admin_port),
            "SENTINEL_DATA_DIR": str(data_dir),
            "SENTINEL_LOG_LEVEL": "warning",
            "SENTINEL_TRACING_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}/v1/traces",
            "SENTINEL_SINKS_JSONL_PATH": "interactions.jsonl",
        }
    )
    return env


def loadgen(url: str, concurrency: int, seconds: float, stream: bool, prompt_bytes: int) -> dict[str, float]:
    args = [
        PY,
        str(HERE / "loadgen.py"),
        url,
        "-c",
        str(concurrency),
        "-d",
        str(seconds),
        "--prompt-bytes",
        str(prompt_bytes),
    ]
    if stream:
        args.append("--stream")
    out = subprocess.run(pinned(1, args), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="scenarios to run (default: all)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for Sentinel (repeatable)")
    parser.add_argument("--label", default="default")
    parser.add_argument(
        "--upstream-cpu",
        type=int,
        choices=(0, 1),
        default=0,
        help="CPU of the mock model server: 0 (default) shares Sentinel's core, as in every table of "
        "docs/benchmarks.md unless it says otherwise; 1 puts it with the load generator, leaving Sentinel a "
        "core of its own, as in a deployment where the model server runs on its own machine",
    )
    parser.add_argument("--prompt-bytes", type=int, default=200)
    parser.add_argument("--output", type=Path, default=HERE / "results")
    parser.add_argument(
        "--during",
        metavar="CMD",
        help="shell command (e.g. a backup) running in the background: each round also measures direct and "
        "via Sentinel while it runs; it is paused (SIGSTOP) in the other rounds; measuring starts at its first "
        "line of output",
    )
    args = parser.parse_args()

    upstream_port, proxy_port, admin_port, otlp_port = free_port(), free_port(), free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="sentinel-bench-"))
    env = sentinel_env(upstream_port, proxy_port, admin_port, otlp_port, data_dir)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value

    results: dict[str, object] = {
        "label": args.label,
        "during": args.during,
        "upstream_cpu": args.upstream_cpu,
        "env": {k: v for k, v in env.items() if k.startswith("SENTINEL_")},
        "scenarios": {},
    }
    with ExitStack() as stack:

        def spawn(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
            process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]
            stack.callback(process.wait, 30)
            stack.callback(process.terminate)
            return process

        spawn(
            pinned(args.upstream_cpu, [PY, str(HERE / "upstream.py"), "--port", str(upstream_port), "--pace-ms", "2"])
        )
        spawn(pinned(1, [PY, str(HERE / "otlp_sink.py"), "--port", str(otlp_port)]))
        sentinel = spawn(pinned(0, [PY, "-m", "sentinel", "serve"]), env=env)
        wait_http(f"http://127.0.0.1:{admin_port}/healthz")
        time.sleep(1.0)
        direct_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        during = None
        if args.during:
            during = subprocess.Popen(args.during, shell=True, stdout=subprocess.PIPE, start_new_session=True)
            stack.callback(during.wait, 30)
            stack.callback(os.killpg, during.pid, signal.SIGTERM)
            stack.callback(os.killpg, during.pid, signal.SIGCONT)
            assert during.stdout is not None
            print("--during:", during.stdout.readline().decode().strip(), flush=True)
            os.killpg(during.pid, signal.SIGSTOP)

        for name in args.only or list(SCENARIOS):
            scenario = SCENARIOS[name]
            rounds: dict[str, list[dict[str, float]]] = {"direct": [], "sentinel": []}

            def measure(
                side: str,
                url: str,
                scenario: dict[str, object] = scenario,
                rounds: dict[str, list[dict[str, float]]] = rounds,
            ) -> None:
                before = cpu_seconds(sentinel.pid)
                run = loadgen(
                    url, int(scenario["concurrency"]), args.seconds, bool(scenario["stream"]), args.prompt_bytes
                )  # type: ignore[call-overload]
                if url == proxy_url:
                    run["settle_s"] = settle(f"http://127.0.0.1:{admin_port}")
                    run["cpu_us_per_request"] = (cpu_seconds(sentinel.pid) - before) / max(1, run["requests"]) * 1e6
                rounds.setdefault(side, []).append(run)

            for _ in range(args.rounds):
                measure("direct", direct_url)
                measure("sentinel", proxy_url)
                if during is not None:
                    os.killpg(during.pid, signal.SIGCONT)
                    time.sleep(1.0)
                    measure("direct_during", direct_url)
                    measure("sentinel_during", proxy_url)
                    os.killpg(during.pid, signal.SIGSTOP)
            summary = summarise(rounds, bool(scenario["stream"]))
            results["scenarios"][name] = {"scenario": scenario, "rounds": rounds, "summary": summary}  # type: ignore[index]
            print(name, json.dumps(summary), flush=True)

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics").read().decode()
        results["dropped"] = [
            line
            for line in metrics.splitlines()
            if line.startswith(
                ("sentinel_recorder_dropped_total", "sentinel_sink_dropped_total", "sentinel_trace_spans_dropped_total")
            )
        ]
        print("\n".join(results["dropped"]))  # type: ignore[arg-type]

    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"proxy-{args.label}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {path}\n")
    print(markdown(results))
    shutil.rmtree(data_dir, ignore_errors=True)


def summarise(rounds: dict[str, list[dict[str, float]]], stream: bool) -> dict[str, float]:
    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[side])

    out = {
        "direct_p50_ms": med("direct", "p50_ms"),
        "sentinel_p50_ms": med("sentinel", "p50_ms"),
        "added_p50_ms": med("sentinel", "p50_ms") - med("direct", "p50_ms"),
        "direct_p99_ms": med("direct", "p99_ms"),
        "sentinel_p99_ms": med("sentinel", "p99_ms"),
        "added_p99_ms": med("sentinel", "p99_ms") - med("direct", "p99_ms"),
        "direct_rps": med("direct", "rps"),
        "sentinel_rps": med("sentinel", "rps"),
        "rps_ratio": med("sentinel", "rps") / med("direct", "rps"),
        "sentinel_cpu_us_per_request": med("sentinel", "cpu_us_per_request"),
        "sentinel_settle_s": med("sentinel", "settle_s"),
        "errors": sum(r["errors"] + r["non_2xx"] for side in rounds.values() for r in side),
    }
    if "sentinel_during" in rounds:
        for key in ("p50_ms", "p99_ms", "rps"):
            out[f"direct_during_{key}"] = med("direct_during", key)
            out[f"sentinel_during_{key}"] = med("sentinel_during", key)
        for key in ("p50_ms", "p99_ms"):
            out[f"added_during_{key}"] = med("sentinel_during", key) - med("direct_during", key)
    if stream:
        out["direct_ttfb_p99_ms"] = med("direct", "ttfb_p99_ms")
        out["sentinel_ttfb_p50_ms"] = med("sentinel", "ttfb_p50_ms")
        out["sentinel_ttfb_p99_ms"] = med("sentinel", "ttfb_p99_ms")
        out["direct_ttfb_p99_warm_ms"] = med("direct", "ttfb_p99_warm_ms")
        out["sentinel_ttfb_p99_warm_ms"] = med("sentinel", "ttfb_p99_warm_ms")
        # Each connection's first request: the cold burst that sets the overall p99 (docs/benchmarks.md).
        out["sentinel_ttfb_p50_cold_ms"] = med("sentinel", "ttfb_p50_cold_ms")
        out["sentinel_ttfb_max_cold_ms"] = med("sentinel", "ttfb_max_cold_ms")
        # Time between first and last byte, per chunk gap, via Sentinel minus direct.
        body_direct = med("direct", "p50_ms") - med("direct", "ttfb_p50_ms")
        body_sentinel = med("sentinel", "p50_ms") - med("sentinel", "ttfb_p50_ms")
        out["added_per_chunk_us"] = (body_sentinel - body_direct) / (STREAM_CHUNKS - 1) * 1000
        out["sentinel_cpu_us_per_chunk"] = med("sentinel", "cpu_us_per_request") / STREAM_CHUNKS
    return out


def markdown(results: dict[str, object]) -> str:
    lines = [
        "| scenario | direct p50 / p99 ms | via Sentinel p50 / p99 ms | added p50 / p99 ms | direct rps | Sentinel rps "
        "| ratio | Sentinel CPU µs/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, data in results["scenarios"].items():  # type: ignore[attr-defined]
        s = data["summary"]
        lines.append(
            f"| {name} | {s['direct_p50_ms']:.3f} / {s['direct_p99_ms']:.3f} | {s['sentinel_p50_ms']:.3f} / "
            f"{s['sentinel_p99_ms']:.3f} | {s['added_p50_ms']:.3f} / {s['added_p99_ms']:.3f} | {s['direct_rps']:.0f} "
            f"| {s['sentinel_rps']:.0f} | {s['rps_ratio']:.1%} | {s['sentinel_cpu_us_per_request']:.0f} |"
        )
    streams = [(n, d["summary"]) for n, d in results["scenarios"].items() if "added_per_chunk_us" in d["summary"]]  # type: ignore[attr-defined]
    if streams:
        lines += [
            "",
            "| stream scenario | direct TTFB p99 ms (warm) | Sentinel TTFB p50 / p99 ms (warm p99) "
            "| Sentinel cold TTFB p50 / max ms | added per chunk µs | Sentinel CPU µs/chunk |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in streams:
            lines.append(
                f"| {name} | {s['direct_ttfb_p99_ms']:.2f} ({s['direct_ttfb_p99_warm_ms']:.2f}) | "
                f"{s['sentinel_ttfb_p50_ms']:.2f} / {s['sentinel_ttfb_p99_ms']:.2f} "
                f"({s['sentinel_ttfb_p99_warm_ms']:.2f}) | {s['sentinel_ttfb_p50_cold_ms']:.2f} / "
                f"{s['sentinel_ttfb_max_cold_ms']:.2f} | {s['added_per_chunk_us']:.1f} "
                f"| {s['sentinel_cpu_us_per_chunk']:.1f} |"
            )
    during = [(n, d["summary"]) for n, d in results["scenarios"].items() if "added_during_p50_ms" in d["summary"]]  # type: ignore[attr-defined]
    if during:
        lines += [
            "",
            f"While `{results['during']}` runs:",
            "",
            "| scenario | direct p50 / p99 ms | via Sentinel p50 / p99 ms | added p50 / p99 ms | direct rps "
            "| Sentinel rps |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in during:
            lines.append(
                f"| {name} | {s['direct_during_p50_ms']:.3f} / {s['direct_during_p99_ms']:.3f} "
                f"| {s['sentinel_during_p50_ms']:.3f} / {s['sentinel_during_p99_ms']:.3f} "
                f"| {s['added_during_p50_ms']:.3f} / {s['added_during_p99_ms']:.3f} "
                f"| {s['direct_during_rps']:.0f} | {s['sentinel_during_rps']:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
