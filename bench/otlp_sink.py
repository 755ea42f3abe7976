"""A do-nothing OTLP/HTTP traces receiver for benchmarks: accepts `POST /v1/traces`, counts, answers 200.

The point is to make Sentinel pay the real cost of encoding and exporting its spans.

    python bench/otlp_sink.py --port 14318
"""

from __future__ import annotations

import argparse

from aiohttp import web

received = {"requests": 0, "bytes": 0}


async def traces(request: web.Request) -> web.Response:
    body = await request.read()
    received["requests"] += 1
    received["bytes"] += len(body)
    return web.Response(body=b"", content_type="application/x-protobuf")


async def stats(request: web.Request) -> web.Response:
    return web.json_response(received)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=14318)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)
