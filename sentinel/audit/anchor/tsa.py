"""RFC 3161 time-stamping of checkpoints: a token from an outside authority proves a checkpoint
existed at the token's time, so the operator can neither back-date one nor fabricate one later."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeAlias

import aiohttp
from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    TimeStampResponse,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)
from yarl import URL

__all__ = ["Digest", "TimestampAuthority", "TimestampError", "TimestampTrust", "verify_token"]

Digest: TypeAlias = Literal["sha256", "sha512"]
StrPath: TypeAlias = str | os.PathLike[str]

# The hash of the data a token stamps (its message imprint), per digest name (hashlib's name): what
# the request asks for and the OID the token must name.
_DIGESTS: dict[str, tuple[HashAlgorithm, x509.ObjectIdentifier]] = {
    "sha256": (HashAlgorithm.SHA256, x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")),
    "sha512": (HashAlgorithm.SHA512, x509.ObjectIdentifier("2.16.840.1.101.3.4.2.3")),
}
# A response is a few kilobytes; a body near this size is not from a time-stamping authority.
_MAX_RESPONSE_BYTES = 1 << 20


class TimestampError(Exception):
    """A token could not be obtained, or it does not verify; the message says which step failed."""


@dataclass(frozen=True, slots=True)
class TimestampTrust:
    """The certificates a token's signer must chain to: self-signed roots (the trust anchors) and
    intermediates that help build the chain when the token does not carry it.

        trust = TimestampTrust.from_pem("/etc/sentinel/tsa-roots.pem")
    """

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        if not self.roots:
            raise ValueError("time-stamping trust needs at least one root certificate")

    @classmethod
    def from_pem(cls, *paths: StrPath) -> TimestampTrust:
        """Every certificate in the PEM files: self-signed ones are roots, the others intermediates."""
        roots: list[x509.Certificate] = []
        intermediates: list[x509.Certificate] = []
        for path in paths:
            with open(path, "rb") as file:
                pem = file.read()
            try:
                certificates = x509.load_pem_x509_certificates(pem)
            except ValueError:
                raise ValueError(f"{os.fspath(path)}: no PEM certificate in the file") from None
            for certificate in certificates:
                (roots if certificate.issuer == certificate.subject else intermediates).append(certificate)
        if not roots:
            names = ", ".join(os.fspath(p) for p in paths) or "no files"
            raise ValueError(f"no self-signed root certificate in {names}: time-stamp tokens need a trust anchor")
        return cls(tuple(roots), tuple(intermediates))


def verify_token(data: bytes, token: bytes, trust: TimestampTrust, *, digest: Digest = "sha256") -> datetime:
    """When `token` (a DER TimeStampResp) says `data` existed, as an aware UTC datetime.

    Raises `TimestampError` unless the token is granted, signed by a certificate with the
    timeStamping extended key usage that chains to `trust`, and its imprint is the `digest` of `data`.
    """
    return _verified(_decode(token), data, trust, digest, nonce=None)


class TimestampAuthority:
    """An RFC 3161 time-stamping authority reached over HTTP (RFC 3161 section 3.4).

        tsa = TimestampAuthority("https://tsa.example/tsr", "/etc/sentinel/tsa-roots.pem")
        token = await tsa.stamp(signed_checkpoint)
        stamped_at = verify_token(signed_checkpoint, token, tsa.trust)

    `certificates` is a `TimestampTrust` or the PEM file(s) to read one from; `timeout` bounds a
    whole exchange, in seconds. Every token `stamp` returns has been verified against them.
    """

    def __init__(
        self,
        url: str,
        certificates: TimestampTrust | StrPath | Iterable[StrPath],
        *,
        digest: Digest = "sha256",
        timeout: float = 10.0,
    ) -> None:
        parsed = URL(url)
        # Credentials in the URL (user info, a key in the query) stay out of error messages and logs.
        self.name = str(parsed.with_user(None).with_query(None))
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"time-stamping authority URL must be http:// or https://, not {self.name!r}")
        if digest not in _DIGESTS:
            raise ValueError(f"time-stamping digest must be one of {', '.join(_DIGESTS)}, not {digest!r}")
        if timeout <= 0:
            raise ValueError(f"time-stamping timeout must be positive, not {timeout!r}")
        self.url = url
        if isinstance(certificates, TimestampTrust):
            self.trust = certificates
        elif isinstance(certificates, str | os.PathLike):
            self.trust = TimestampTrust.from_pem(certificates)
        else:
            self.trust = TimestampTrust.from_pem(*certificates)
        self.digest: Digest = digest
        self.timeout = timeout

    async def stamp(self, data: bytes) -> bytes:
        """A verified token (the DER TimeStampResp) in which the authority says `data` exists now."""
        algorithm, _ = _DIGESTS[self.digest]
        request = TimestampRequestBuilder().data(data).hash_algorithm(algorithm).build()
        body = await self._exchange(request.as_bytes())
        try:
            response = _decode(body)
            _verified(response, data, self.trust, self.digest, nonce=request.nonce)
        except TimestampError as exc:
            raise TimestampError(f"time-stamping authority {self.name}: {exc}") from None
        return body

    async def _exchange(self, query: bytes) -> bytes:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.post(
                    self.url,
                    data=query,
                    headers={"Content-Type": "application/timestamp-query"},
                    allow_redirects=False,
                ) as response,
            ):
                if response.status != 200:
                    reason = f" {response.reason}" if response.reason else ""
                    raise TimestampError(f"time-stamping authority {self.name} answered HTTP {response.status}{reason}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > _MAX_RESPONSE_BYTES:
                        raise TimestampError(
                            f"time-stamping authority {self.name} answered more than {_MAX_RESPONSE_BYTES} bytes"
                        )
        except TimeoutError:
            raise TimestampError(
                f"time-stamping authority {self.name} did not answer within {self.timeout:g} s"
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise TimestampError(f"time-stamping authority {self.name} unreachable: {exc}") from None
        except aiohttp.ClientError as exc:
            raise TimestampError(f"time-stamping authority {self.name} exchange failed: {exc}") from None
        return bytes(body)


def _decode(token: bytes) -> TimeStampResponse:
    try:
        return decode_timestamp_response(token)
    except ValueError as exc:
        raise TimestampError(f"not an RFC 3161 TimeStampResp: {exc}") from None


def _verified(
    response: TimeStampResponse, data: bytes, trust: TimestampTrust, digest: Digest, nonce: int | None
) -> datetime:
    if response.status != PKIStatus.GRANTED:
        status = _status_name(response.status)
        text = "; ".join(response.status_string)
        raise TimestampError(f"request rejected with status {status}" + (f": {text}" if text else ""))
    info = response.tst_info
    _, oid = _DIGESTS[digest]
    if info.message_imprint.hash_algorithm != oid:
        raise TimestampError(
            f"token's imprint is hashed with {info.message_imprint.hash_algorithm.dotted_string}, not {digest}"
        )
    # The library checks the signature, the chain to the trust anchors (at the token's time, as
    # RFC 3161 asks) and the signer's timeStamping key usage; the comparisons with this request
    # are made below, so that each failure has its own message.
    verifier = VerifierBuilder(roots=list(trust.roots), intermediates=list(trust.intermediates)).build()
    try:
        verifier.verify(response, info.message_imprint.message)
    except VerificationError as exc:
        raise TimestampError(f"token signature does not verify against the trusted certificates: {exc}") from None
    if nonce is not None and info.nonce != nonce:
        raise TimestampError("token's nonce is not the request's: it answers another request")
    if info.message_imprint.message != hashlib.new(digest, data).digest():
        raise TimestampError(f"token's imprint is not the {digest} of the data: it stamps other data")
    return info.gen_time.astimezone(UTC)


def _status_name(status: int) -> str:
    try:
        return PKIStatus(status).name.lower()
    except ValueError:
        return str(status)
