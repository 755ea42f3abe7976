"""`Exchange`: the raw notes the request path keeps about one call, cheap to fill while forwarding.

Nothing here parses content; `sentinel.capture.build` turns an `Exchange` into an `Interaction`
later, on the recorder task, so the request path only appends bytes and timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sentinel.interaction import Interaction, Operation, Outcome, Protocol
from sentinel.telemetry.tracing import TraceContext


@dataclass(slots=True, eq=False)
class Exchange:
    id: str
    started_at: float
    """Unix time the request arrived."""
    t_start: float
    """`time.perf_counter()` at arrival; every other `t_*` is on the same clock."""
    method: str
    path: str
    query: str
    protocol: Protocol
    operation: Operation
    trace: TraceContext
    client_address: str | None = None
    user_agent: str | None = None
    authorization: bytes | None = None
    request_content_type: bytes | None = None
    request_body: bytes = b""
    request_bytes: int = 0

    t_upstream_start: float | None = None
    t_upstream_headers: float | None = None
    t_response_start: float | None = None
    t_end: float | None = None

    upstream_status: int | None = None
    status: int = 0
    response_content_type: str = ""
    response_content_encoding: str = ""
    chunks: list[bytes] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)
    captured_bytes: int = 0
    response_bytes: int = 0
    truncated: bool = False

    outcome: Outcome = Outcome.OK
    error_type: str | None = None
    error_message: str | None = None
    client_disconnected: bool = False
    completed: bool = False
    """Set just before the last byte goes to the client; after it a disconnect is not an abort."""
    starting: bool = False
    """Counted in the proxy's `Foreground` (on its way to its first byte) until its response starts."""
    annotations: dict[str, Any] = field(default_factory=dict)
    journaled: bool = False
    """Strict mode: the completed record has been handed to the journal."""
    interaction: Interaction | None = None
    """The record, when something on the request path already built it (the strict audit journal)."""
    """Plaintext findings from request hooks (policy decisions, PHI categories); copied to the record."""
