"""A fast mock model server for benchmarks: raw asyncio protocol on uvloop, httptools parser.

POST /v1/chat/completions answers a fixed ~400-byte JSON completion, or, when the body has
`"stream": true`, 54 SSE chunks paced `--pace-ms` apart (role chunk, 50 content deltas, finish,
usage, [DONE]). It does as little as possible so that the proxy, not the mock, is measured.

    python bench/upstream.py --port 18000 --pace-ms 2
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import orjson
import uvloop

_BASE = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1730000000, "model": "bench"}


def _frame(delta: dict[str, object], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return b"data: " + orjson.dumps({**_BASE, "choices": [choice]}) + b"\n\n"


STREAM = (
    [_frame({"role": "assistant", "content": ""})]
    + [_frame({"content": f" tok{i}"}) for i in range(50)]
    + [_frame({}, "stop")]
    + [
        b"data: "
        + orjson.dumps(
            {**_BASE, "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 50, "total_tokens": 70}}
        )
        + b"\n\n",
        b"data: [DONE]\n\n",
    ]
)
assert len(STREAM) == 54

BODY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1730000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
    }
)
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(BODY)) + BODY
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


class Handler(asyncio.Protocol):
    pace = 0.002

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body.clear()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if b'"stream": true' in self.body or b'"stream":true' in self.body:
            # The head and first frame go out at once, as a real server's first token would.
            self.transport.write(STREAM_HEAD + _chunk(STREAM[0]))
            asyncio.get_running_loop().create_task(self.stream())
        else:
            self.transport.write(RESPONSE)

    async def stream(self) -> None:
        transport = self.transport
        assert transport is not None
        for frame in STREAM[1:]:
            await asyncio.sleep(self.pace)
            if transport.is_closing():
                return
            transport.write(_chunk(frame))
        transport.write(b"0\r\n\r\n")


async def main(host: str, port: int, pace_ms: float) -> None:
    Handler.pace = pace_ms / 1000
    server = await asyncio.get_running_loop().create_server(Handler, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--pace-ms", type=float, default=2.0)
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port, args.pace_ms))
