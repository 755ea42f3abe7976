"""Error bodies Sentinel writes itself, shaped like the upstream's own so clients parse them as usual.

OpenAI-compatible routes get `{"error": {"message", "type", "param", "code"}}`; Ollama routes
(`/api/*`) get Ollama's `{"error": "message"}`, which the `ollama` client turns into `ResponseError`.
"""

from __future__ import annotations

import orjson

from sentinel.interaction import Protocol

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    413: "request_too_large",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def error_body(protocol: Protocol, status: int, error_type: str, message: str) -> bytes:
    if protocol is Protocol.OLLAMA:
        return orjson.dumps({"error": message})
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": _CODES.get(status, str(status))}}
    )
