"""The `Interaction`: one typed record of one call through the proxy, the unit everything downstream reads.

Metrics, spans, the audit trail and reports are all built from it. Fields that carry content
(messages, response, reasoning, tool calls, the end-user id) are listed in `CONTENT_FIELDS` so the
audit trail knows what to encrypt; everything else is metadata that stays searchable.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

SCHEMA_VERSION = 1


class Operation(StrEnum):
    """`gen_ai.operation.name` values (OpenTelemetry GenAI semantic conventions), plus `other`."""

    CHAT = "chat"
    TEXT_COMPLETION = "text_completion"
    EMBEDDINGS = "embeddings"
    OTHER = "other"


class Protocol(StrEnum):
    OPENAI = "openai"
    OLLAMA = "ollama"
    OTHER = "other"


class Outcome(StrEnum):
    OK = "ok"
    """The upstream answered and the whole answer reached the client (whatever its HTTP status)."""
    ERROR = "error"
    """The upstream failed: unreachable, timed out, 4xx/5xx, broke mid-stream or sent an error in the stream."""
    ABORTED = "aborted"
    """The client went away before the answer was complete; the upstream request was cancelled."""
    REJECTED = "rejected"
    """Sentinel refused the request before it reached the upstream (too large, policy, audit unavailable)."""


class ErrorType(StrEnum):
    """Values of `error_type` (OpenTelemetry `error.type`): why an interaction did not end `ok`."""

    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_CLIENT_ERROR = "upstream_4xx"
    UPSTREAM_SERVER_ERROR = "upstream_5xx"
    UPSTREAM_BROKEN_STREAM = "upstream_broken_stream"
    STREAM_ERROR = "stream_error"
    CLIENT_DISCONNECT = "client_disconnect"
    REQUEST_TOO_LARGE = "request_too_large"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    POLICY_BLOCKED = "policy_blocked"
    INTERNAL = "internal"


@dataclass(slots=True)
class Caller:
    """Who made the call. `user` is the end-user id Dify puts in the request's `user` field."""

    user: str | None = None
    api_key_id: str | None = None
    """A fingerprint of the bearer token (`key-` + 12 hex of its SHA-256), never the token itself."""
    address: str | None = None
    user_agent: str | None = None


@dataclass(slots=True)
class Usage:
    """Token counts as the model server reported them; `None` means it reported none (never guessed)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    reasoning_tokens: int | None = None
    source: str | None = None
    """Where the counts came from: `usage` (OpenAI usage object or chunk), `ollama` (eval counts), or None."""


@dataclass(slots=True)
class Interaction:
    """One call through Sentinel, from the first request byte to the last response byte."""

    id: str
    started_at: float
    """Unix time (seconds) the request arrived."""
    method: str
    path: str
    query: str = ""
    instance: str = ""
    schema_version: int = SCHEMA_VERSION
    trace_id: str = ""
    span_id: str = ""
    protocol: Protocol = Protocol.OTHER
    operation: Operation = Operation.OTHER
    provider: str = ""
    stream: bool = False
    model_requested: str | None = None
    model_returned: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    caller: Caller = field(default_factory=Caller)
    request_json_valid: bool | None = None
    """False when the body claimed JSON (or the route expects it) but did not parse; None for no body."""
    request_messages: Any = None
    """Chat messages, completion prompt, or embeddings input, as sent."""
    response_text: str | None = None
    reasoning_text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    extra_choices: list[str] | None = None
    """Texts of choices beyond the first when the caller asked for n > 1."""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    ttft_s: float | None = None
    """Time to first token: request arrival to the first chunk carrying generated text (streams only)."""
    duration_s: float = 0.0
    upstream_duration_s: float | None = None
    overhead_s: float | None = None
    """Sentinel's own added latency: time spent before the upstream call plus after its response headers."""
    status_code: int = 0
    upstream_status: int | None = None
    outcome: Outcome = Outcome.OK
    error_type: str | None = None
    error_message: str | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    chunks: int = 0
    content_truncated: bool = False
    annotations: dict[str, Any] = field(default_factory=dict)
    """Findings added by later stages (policy rule hits, PHI categories), plaintext metadata only."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interaction:
        data = dict(data)
        data["caller"] = Caller(**data.get("caller") or {})
        data["usage"] = Usage(**data.get("usage") or {})
        data["protocol"] = Protocol(data.get("protocol", "other"))
        data["operation"] = Operation(data.get("operation", "other"))
        data["outcome"] = Outcome(data.get("outcome", "ok"))
        return cls(**data)


CONTENT_FIELDS: tuple[str, ...] = (
    "request_messages",
    "response_text",
    "reasoning_text",
    "tool_calls",
    "extra_choices",
    "caller.user",
)
"""Fields holding what people wrote or the model said, or who the end user is: encrypted at rest."""


_getrandbits = random.getrandbits


def new_interaction_id() -> str:
    """A UUIDv7-shaped id: time-ordered (so stores index it well) and random in its low 74 bits.

    Ids need to be unique, not secret, so the fast PRNG (seeded from the OS at start) is enough.
    """
    ms = time.time_ns() // 1_000_000
    rand = _getrandbits(74)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
