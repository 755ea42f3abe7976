"""A small built-in DEMO model server: OpenAI-compatible and Ollama-native, with canned answers.

It is not a model. It exists so `sentinel demo` (and anyone without a GPU) can watch Sentinel
work: it streams like vLLM serving DeepSeek-R1 (`reasoning_content` deltas, an include_usage chunk,
`: keep-alive` comments, `data: [DONE]`) and like Ollama (NDJSON with `thinking`, a final
`done: true` object with eval counts). Every answer says it comes from the demo upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from aiohttp import web

DEMO_MODEL = "deepseek-r1-demo"
_BANNER = "[Sentinel demo upstream - not a real model]"


def sse(obj: Any) -> bytes:
    """One Server-Sent Events frame as vLLM writes it."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
SSE_KEEPALIVE = b": keep-alive\n\n"


def ndjson(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def words(text: str) -> list[str]:
    """Split text into word-ish pieces that keep their spaces, like a tokenizer's stream."""
    pieces: list[str] = []
    for index, word in enumerate(text.split(" ")):
        pieces.append(word if index == 0 else " " + word)
    return pieces


def _last_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(messages or "")


def demo_answer(prompt: str) -> tuple[str, str]:
    """(reasoning, answer) for a prompt: deterministic, so demos and tests can check them."""
    reasoning = f"The user wrote {len(prompt.split())} words. I should answer briefly."
    answer = f"{_BANNER} You said: {prompt[:200]}"
    return reasoning, answer


def chat_chunks(
    completion_id: str,
    model: str,
    reasoning: str,
    answer: str,
    *,
    include_usage: bool,
    prompt_tokens: int,
    created: int,
) -> Iterable[bytes]:
    """The SSE frames of a streamed chat completion, shaped like vLLM's for DeepSeek-R1."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    for piece in words(reasoning):
        yield chunk({"reasoning_content": piece})
    yield SSE_KEEPALIVE
    for piece in words(answer):
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    completion_tokens = len(words(reasoning)) + len(words(answer))
    if include_usage:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": len(words(reasoning))},
        }
        yield sse({**base, "choices": [], "usage": usage})
    yield SSE_DONE


class DemoUpstream:
    """The demo server's handlers. `delay` paces streamed chunks (seconds between two)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/api/chat", self.ollama_chat)
        app.router.add_post("/api/generate", self.ollama_generate)
        app.router.add_post("/api/embed", self.ollama_embed)
        app.router.add_get("/api/tags", self.ollama_tags)
        app.router.add_get("/api/ps", self.ollama_ps)
        app.router.add_get("/api/version", self.ollama_version)
        app.router.add_get("/health", self.health)
        return app

    async def _json(self, request: web.Request) -> dict[str, Any]:
        self.requests += 1
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(
                body=orjson.dumps({"error": {"message": "invalid JSON body", "type": "BadRequestError", "code": 400}}),
                content_type="application/json",
            ) from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return body

    async def _stream(self, request: web.Request, frames: Iterable[bytes], content_type: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
            if self.delay:
                await asyncio.sleep(self.delay)
        await response.write_eof()
        return response

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": DEMO_MODEL, "object": "model", "created": 0, "owned_by": "sentinel-demo"}
        return web.json_response({"object": "list", "data": [model]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        model = body.get("model") or DEMO_MODEL
        prompt = _last_user_text(body.get("messages"))
        reasoning, answer = demo_answer(prompt)
        prompt_tokens = len(prompt.split()) + 4
        created = int(time.time())
        completion_id = f"chatcmpl-demo{self.requests}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            frames = chat_chunks(
                completion_id,
                model,
                reasoning,
                answer,
                include_usage=include_usage,
                prompt_tokens=prompt_tokens,
                created=created,
            )
            return await self._stream(request, frames, "text/event-stream; charset=utf-8")
        completion_tokens = len(words(reasoning)) + len(words(answer))
        message = {"role": "assistant", "content": answer, "reasoning_content": reasoning}
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        model = body.get("model") or DEMO_MODEL
        _, answer = demo_answer(str(body.get("prompt", "")))
        base = {"id": f"cmpl-demo{self.requests}", "object": "text_completion", "created": int(time.time())}
        if body.get("stream"):
            frames = [sse({**base, "model": model, "choices": [{"index": 0, "text": w}]}) for w in words(answer)]
            return await self._stream(request, [*frames, SSE_DONE], "text/event-stream; charset=utf-8")
        tokens = len(words(answer))
        usage = {"prompt_tokens": 4, "completion_tokens": tokens, "total_tokens": 4 + tokens}
        choice = {"index": 0, "text": answer, "finish_reason": "stop"}
        return web.json_response({**base, "model": model, "choices": [choice], "usage": usage})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]} for i in range(len(items))]
        tokens = sum(len(str(item).split()) for item in items)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response({"object": "list", "model": body.get("model"), "data": data, "usage": usage})

    def _ollama_final(self, model: str, prompt: str, generated: int) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": _now_iso(),
            "done": True,
            "done_reason": "stop",
            "total_duration": 1_000_000,
            "load_duration": 100_000,
            "prompt_eval_count": len(prompt.split()) + 4,
            "prompt_eval_duration": 200_000,
            "eval_count": generated,
            "eval_duration": 700_000,
        }

    async def ollama_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        model = body.get("model") or DEMO_MODEL
        prompt = _last_user_text(body.get("messages"))
        reasoning, answer = demo_answer(prompt)
        think = body.get("think") is True
        final = self._ollama_final(model, prompt, len(words(answer)) + (len(words(reasoning)) if think else 0))
        if body.get("stream", True) is False:
            message: dict[str, Any] = {"role": "assistant", "content": answer}
            if think:
                message["thinking"] = reasoning
            return web.json_response({**final, "message": message})

        def frames() -> Iterable[bytes]:
            if think:
                for piece in words(reasoning):
                    yield ndjson(
                        {
                            "model": model,
                            "created_at": _now_iso(),
                            "message": {"role": "assistant", "content": "", "thinking": piece},
                            "done": False,
                        }
                    )
            for piece in words(answer):
                yield ndjson(
                    {
                        "model": model,
                        "created_at": _now_iso(),
                        "message": {"role": "assistant", "content": piece},
                        "done": False,
                    }
                )
            yield ndjson({**final, "message": {"role": "assistant", "content": ""}})

        return await self._stream(request, frames(), "application/x-ndjson")

    async def ollama_generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        model = body.get("model") or DEMO_MODEL
        prompt = str(body.get("prompt", ""))
        _, answer = demo_answer(prompt)
        final = self._ollama_final(model, prompt, len(words(answer)))
        if body.get("stream", True) is False:
            return web.json_response({**final, "response": answer})
        frames = [
            ndjson({"model": model, "created_at": _now_iso(), "response": piece, "done": False})
            for piece in words(answer)
        ]
        frames.append(ndjson({**final, "response": ""}))
        return await self._stream(request, frames, "application/x-ndjson")

    async def ollama_embed(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        return web.json_response(
            {
                "model": body.get("model"),
                "embeddings": [[0.1, 0.2, 0.3, 0.4] for _ in items],
                "total_duration": 1000,
                "load_duration": 100,
                "prompt_eval_count": sum(len(str(item).split()) for item in items),
            }
        )

    async def ollama_tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": DEMO_MODEL, "model": DEMO_MODEL, "size": 1_000_000}]})

    async def ollama_ps(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"models": [{"name": DEMO_MODEL, "model": DEMO_MODEL, "size": 2_000_000, "size_vram": 1_500_000}]}
        )

    async def ollama_version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-sentinel-demo"})


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


@contextlib.asynccontextmanager
async def running_demo_upstream(host: str = "127.0.0.1", port: int = 0, delay: float = 0.0) -> AsyncIterator[str]:
    """Serve the demo upstream on a real socket; yields its base URL."""
    runner = web.AppRunner(DemoUpstream(delay).app(), access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        await runner.cleanup()
