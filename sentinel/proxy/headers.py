"""Which headers cross the proxy: end-to-end ones unchanged, hop-by-hop ones dropped (RFC 9110 §7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
"""Headers that describe one connection, never forwarded. `Connection` may name more (see below)."""


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names a `Connection` header declares hop-by-hop (besides `close` / `keep-alive`)."""
    tokens = {token.strip().lower() for token in value.split(b",")}
    tokens.discard(b"close")
    tokens.discard(b"keep-alive")
    tokens.discard(b"")
    return frozenset(tokens)


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop ones, names lower-cased for ASGI."""
    out: list[tuple[bytes, bytes]] = []
    extra: frozenset[bytes] = frozenset()
    for name, value in raw:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == b"connection":
                extra = connection_tokens(value)
            continue
        out.append((lower, value))
    if extra:
        out = [(name, value) for name, value in out if name not in extra]
    return out
