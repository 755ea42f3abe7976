"""The policy hook's own cost on the request path, in process: `on_request` for a chat request with a
prompt of N bytes (clean prose, prose with PHI, and the load generator's `x` run), and the response
filter per streamed frame. Complements `bench/proxy.py`, which measures the whole proxy end to end.

    python bench/policy.py                                   # bench/policy-20-rules.yaml, 10 KB prompts
    python bench/policy.py --policy my-policy.yaml --prompt-bytes 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sentinel.interaction import Operation, Protocol  # noqa: E402
from sentinel.policy.hook import PolicyHook  # noqa: E402
from sentinel.policy.loading import load_policy  # noqa: E402
from sentinel.proxy.exchange import Exchange  # noqa: E402
from sentinel.telemetry.tracing import TraceStarter  # noqa: E402
from tests.support.frames import SSE_HEADERS, vllm_chat_stream  # noqa: E402

PROSE = (
    "The patient reported intermittent headaches over the past three weeks, worse in the morning and "
    "relieved by rest. No visual disturbance, no fever, no recent travel. Blood pressure was within the "
    "normal range at the last visit and the current medication list is unchanged since the spring. "
)
PHI = "Patient: Maria Lopez, SSN 219-55-0187, MRN: 00482913, seen 03/14/2024, phone 415-555-2671. "


class Fixed:
    def __init__(self, path: Path) -> None:
        self.current = load_policy(path)


def exchange(body: bytes) -> Exchange:
    return Exchange(
        id="bench",
        started_at=0.0,
        t_start=0.0,
        method="POST",
        path="/v1/chat/completions",
        query="",
        protocol=Protocol.OPENAI,
        operation=Operation.CHAT,
        trace=TraceStarter().start(None, None),
        authorization=b"Bearer bench-key",
        request_content_type=b"application/json",
        request_body=body,
    )


def per_call(fn: object, rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=HERE / "policy-20-rules.yaml")
    parser.add_argument("--prompt-bytes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    hook = PolicyHook(Fixed(args.policy))
    n = args.prompt_bytes
    prompts = {
        "prose": (PROSE * (n // len(PROSE) + 1))[:n],
        "prose+PHI": (PHI + PROSE * (n // len(PROSE) + 1))[:n],
        "x (loadgen)": "x" * n,
    }
    print(f"policy {args.policy.name}, prompt {n} bytes, median / p99 of {args.rounds} calls")
    for name, prompt in prompts.items():
        body = orjson.dumps(
            {"model": "bench", "messages": [{"role": "user", "content": prompt}], "temperature": 1.2, "user": "u"}
        )

        def call(body: bytes = body) -> None:
            ex = exchange(body)
            hook.on_request(ex)
            hook.response_filter(ex)

        p50, p99 = per_call(call, args.rounds)
        parse_p50, _ = per_call(lambda body=body: orjson.loads(body), args.rounds)
        print(f"  on_request {name:12s}: {p50:7.1f} / {p99:7.1f} µs   (orjson.loads alone {parse_p50:.1f} µs)")

    frames = vllm_chat_stream([], [f" tok{i}" for i in range(50)])
    body = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True})

    def stream() -> None:
        ex = exchange(body)
        ex.response_content_type = SSE_HEADERS["Content-Type"]
        ex.upstream_status = 200
        hook.on_request(ex)
        response_filter = hook.response_filter(ex)
        assert response_filter is not None
        for frame in frames:
            ex.chunks.append(frame)
            response_filter.feed(frame)
        response_filter.finish()

    p50, p99 = per_call(stream, max(100, args.rounds // 10))
    print(f"  stream of {len(frames)} frames: {p50:7.1f} / {p99:7.1f} µs  ({p50 / len(frames):.1f} µs per frame)")


if __name__ == "__main__":
    main()
