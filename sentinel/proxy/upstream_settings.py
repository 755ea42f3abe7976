"""How the proxy's upstream client behaves: one small value object per concern, as httpx's `Timeout`
and `Limits`, and the TLS settings in one place.

    >>> pool = UpstreamPool(                                    # doctest: +SKIP
    ...     "https://vllm.internal:8000",
    ...     timeouts=UpstreamTimeouts(connect=10, read=300, pool=10),
    ...     limits=UpstreamLimits(max_connections=1024, keepalive_expiry=4, warm_window=60),
    ...     tls=UpstreamTls(ca_bundle=Path("/etc/ssl/hospital-ca.pem"),
    ...                     client_cert=Path("sentinel.pem"), client_key=Path("sentinel.key")),
    ... )
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """Seconds: to connect; of silence while waiting for or reading an answer; waiting for a pooled
    connection when all `max_connections` are busy (then 504)."""

    connect: float = 10.0
    read: float = 300.0
    pool: float = 10.0


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """At most `max_connections` open; idle ones closed after `keepalive_expiry` seconds (keep it
    below the server's own idle timeout).

    After a burst the pool stays warm: for `warm_window` seconds after the most connections were
    busy at once, idle connections that expire (or that the server closes after serving) are
    replaced in the background, up to that many (at most `max_warm`), so the next burst finds them
    open instead of connecting on its requests' path.
    `warm_window=0` turns this off.
    """

    max_connections: int = 1024
    keepalive_expiry: float = 4.0
    warm_window: float = 60.0
    max_warm: int = 128


class TlsError(ValueError):
    """A CA bundle, certificate or key cannot be loaded; the message names the file."""


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """TLS towards an `https://` upstream: the system's CAs unless `ca_bundle` names a PEM file (an
    internal CA), a client certificate for mutual TLS, and — for tests only — no verification."""

    verify: bool = True
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    """PEM certificate (chain) presented to the server; `client_key` is its key, unless in the same file."""
    client_key: Path | None = None
    client_key_password: str | None = field(default=None, repr=False)
    """Decrypts an encrypted `client_key`; without it an encrypted key is a `TlsError`, never a prompt."""

    def context(self) -> ssl.SSLContext:
        """The client context; raises `TlsError` naming the file that cannot be loaded."""
        try:
            context = ssl.create_default_context(cafile=str(self.ca_bundle) if self.ca_bundle else None)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot load the CA bundle {self.ca_bundle}: {exc}") from None
        if self.client_cert is not None:
            try:
                # A password callable, never None: with None, OpenSSL asks for an encrypted key's
                # password on the terminal, which hangs a service.
                context.load_cert_chain(self.client_cert, self.client_key, password=self._password)
            except (OSError, ssl.SSLError) as exc:
                hint = "" if self.client_key_password else " (an encrypted key needs upstream.client_key_password)"
                raise TlsError(
                    f"cannot load the client certificate {self.client_cert} (key {self.client_key}): {exc}{hint}"
                ) from None
        elif self.client_key is not None:
            raise TlsError("a client key without a client certificate: set both")
        if not self.verify:  # `sentinel serve` says so loudly at start (server.build)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _password(self) -> bytes:
        return (self.client_key_password or "").encode()
