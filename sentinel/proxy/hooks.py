"""Extension points on the request path, for the parts that must act *before* bytes move.

Most of Sentinel works after the fact, from `Interaction` records (see `sentinel.sinks`). Two
things cannot: response policies (which may rewrite or refuse a request and rewrite a streamed
answer) and the strict audit journal (which must make a record durable before the request goes
upstream and before the last byte goes back). They plug in here. Both run on the request path, so
they must be cheap and must never block the event loop.

    class Clamp:
        def on_request(self, exchange: Exchange) -> Refusal | None:
            ...  # may replace exchange.request_body; return a Refusal to stop the call

        def response_filter(self, exchange: Exchange) -> ResponseFilter | None:
            return None  # or a per-call object that rewrites the answer as it streams
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sentinel.proxy.exchange import Exchange


@dataclass(slots=True)
class Refusal:
    """Stop the call before it reaches the upstream; the client gets `status` with an error body
    shaped for its protocol (see `sentinel.proxy.errors`)."""

    status: int
    error_type: str
    message: str


class StopResponse(Exception):
    """Raised by a `ResponseFilter`'s `feed` or `finish` to end the answer early (a policy blocked it).

    If nothing was sent yet (a buffered body) the client gets `refusal`, like a refused request; if the
    stream has started, `tail` (e.g. an error event) is the last thing it gets. Either way the upstream
    response is abandoned, which cancels the generation, and the record says `rejected`.
    """

    def __init__(self, refusal: Refusal, tail: bytes) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.tail = tail


class ResponseFilter(Protocol):
    """Rewrites one response as it streams. `feed` returns the bytes to send now (it may hold some
    back, e.g. a possible keyword split across chunks); `finish` returns what is left at the end.
    Either may raise `StopResponse`."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class RequestHook(Protocol):
    def on_request(self, exchange: Exchange) -> Refusal | None:
        """Called once the whole request body is read, before anything is sent upstream.

        May replace `exchange.request_body` (what is forwarded) and add plaintext metadata to
        `exchange.annotations`; returns a `Refusal` to stop the call.
        """

    def response_filter(self, exchange: Exchange) -> ResponseFilter | None:
        """A filter for this call's response, or None to forward it untouched."""


class JournalUnavailable(Exception):
    """The journal cannot make a record durable; in strict mode the call is refused (503)."""


class Journal(Protocol):
    """Durable recording on the request path (the audit trail's `strict` mode)."""

    async def begin(self, exchange: Exchange) -> None:
        """Make a record of the request durable before it is forwarded; raise `JournalUnavailable`."""

    async def complete(self, exchange: Exchange) -> None:
        """Make the finished record durable before the response's last byte is released."""
