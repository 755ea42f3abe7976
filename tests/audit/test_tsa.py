"""RFC 3161 time-stamps on checkpoints, against a real authority (`openssl ts -reply`) and checked
again by the other implementation (`openssl ts -verify`)."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sentinel.audit.anchor.tsa import TimestampAuthority, TimestampError, TimestampTrust, verify_token
from tests.support.tsa import KeyType, Tsa, openssl_query, openssl_verify, running_tsa

# What the checkpoint writer stamps: a signed checkpoint note (origin, size, root hash, signature).
CHECKPOINT = (
    b"sentinel.example/audit/node-1\n"
    b"4096\n"
    b"uL8jKC9zmdFvYbTcIBwSfTgZjIiTpZ6I5fcRyJJrH0Y=\n"
    b"\n"
    b"\xe2\x80\x94 sentinel.example/audit/node-1 Az3grkP+vS6ljVnK7wmH6Wx0SbMkTxdR0oMO0Xzd1jJxrr2Rd9nGkg==\n"
)


@pytest.fixture
def tsa(tmp_path: Path) -> Iterator[Tsa]:
    with running_tsa(tmp_path / "tsa") as running:
        yield running


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("key", ["ec", "rsa"])
async def test_a_stamped_checkpoint_verifies_here_and_with_openssl(tmp_path: Path, key: KeyType) -> None:
    with running_tsa(tmp_path / "tsa", key=key) as tsa:
        authority = TimestampAuthority(tsa.url, tsa.ca_path)
        before = datetime.now(UTC).replace(microsecond=0)  # genTime has whole seconds
        token = await authority.stamp(CHECKPOINT)
        after = datetime.now(UTC)

    stamped_at = verify_token(CHECKPOINT, token, TimestampTrust.from_pem(tsa.ca_path))
    assert stamped_at.tzinfo is UTC
    assert before <= stamped_at <= after
    query = tsa.queries[0]
    assert hashlib.sha256(CHECKPOINT).digest() in query  # the imprint is SHA-256 of the checkpoint

    verdict = openssl_verify(
        write(tmp_path / "checkpoint", CHECKPOINT), write(tmp_path / "token.tsr", token), tsa.ca_path
    )
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert "Verification: OK" in verdict.stdout


async def test_a_chain_through_an_intermediate_verifies(tmp_path: Path) -> None:
    with running_tsa(tmp_path / "tsa", intermediate=True) as tsa:
        token = await TimestampAuthority(tsa.url, [tsa.trust_path]).stamp(CHECKPOINT)

    trust = TimestampTrust.from_pem(tsa.trust_path)
    assert (len(trust.roots), len(trust.intermediates)) == (1, 1)
    verify_token(CHECKPOINT, token, trust)
    with pytest.raises(TimestampError, match="does not verify against the trusted certificates"):
        verify_token(CHECKPOINT, token, TimestampTrust.from_pem(tsa.ca_path))  # the token lacks the intermediate

    data, reply = write(tmp_path / "checkpoint", CHECKPOINT), write(tmp_path / "token.tsr", token)
    verdict = openssl_verify(data, reply, tsa.ca_path, tsa.trust_path)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr


async def test_data_changed_by_one_byte_is_rejected(tsa: Tsa, tmp_path: Path) -> None:
    token = await TimestampAuthority(tsa.url, tsa.ca_path).stamp(CHECKPOINT)
    changed = bytearray(CHECKPOINT)
    changed[31] ^= 0x01  # one bit of the tree size line

    with pytest.raises(TimestampError, match="imprint is not the sha256 of the data"):
        verify_token(bytes(changed), token, TimestampTrust.from_pem(tsa.ca_path))
    verdict = openssl_verify(write(tmp_path / "changed", bytes(changed)), write(tmp_path / "t.tsr", token), tsa.ca_path)
    assert verdict.returncode != 0
    assert "Verification: FAILED" in verdict.stdout


async def test_a_token_from_an_authority_outside_the_trusted_root_is_rejected(tsa: Tsa, tmp_path: Path) -> None:
    with running_tsa(tmp_path / "rogue", name="Rogue") as rogue:
        trusting_ours = TimestampAuthority(rogue.url, tsa.ca_path)
        with pytest.raises(TimestampError, match="does not verify against the trusted certificates") as raised:
            await trusting_ours.stamp(CHECKPOINT)
        assert rogue.url in str(raised.value)
        rogue_token = await TimestampAuthority(rogue.url, rogue.ca_path).stamp(CHECKPOINT)

    with pytest.raises(TimestampError, match="does not verify against the trusted certificates"):
        verify_token(CHECKPOINT, rogue_token, TimestampTrust.from_pem(tsa.ca_path))
    data, reply = write(tmp_path / "checkpoint", CHECKPOINT), write(tmp_path / "rogue.tsr", rogue_token)
    assert openssl_verify(data, reply, tsa.ca_path).returncode != 0


async def test_an_authority_that_is_down_is_a_clear_error(tsa: Tsa) -> None:
    # A bound socket that never listens: connecting to it is refused, and no one else can take the port.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/tsr"
        with pytest.raises(TimestampError, match=r"time-stamping authority http://127\.0\.0\.1:\d+/tsr unreachable"):
            await TimestampAuthority(url, tsa.ca_path).stamp(CHECKPOINT)


async def test_an_authority_answering_500_is_a_clear_error(tsa: Tsa) -> None:
    tsa.status = 500
    with pytest.raises(TimestampError, match="answered HTTP 500 Internal Server Error") as raised:
        await TimestampAuthority(tsa.url, tsa.ca_path).stamp(CHECKPOINT)
    assert tsa.url in str(raised.value)


async def test_an_answer_for_other_data_is_rejected(tsa: Tsa) -> None:
    ours, theirs = hashlib.sha256(CHECKPOINT).digest(), hashlib.sha256(b"a back-dated checkpoint").digest()

    def other_data(query: bytes) -> bytes:
        assert query.count(ours) == 1
        return query.replace(ours, theirs)  # same nonce, another imprint

    tsa.rewrite = other_data
    with pytest.raises(TimestampError, match="imprint is not the sha256 of the data: it stamps other data"):
        await TimestampAuthority(tsa.url, tsa.ca_path).stamp(CHECKPOINT)


async def test_an_answer_to_another_request_is_rejected(tsa: Tsa) -> None:
    # openssl's own query for the same checkpoint: the imprint matches, the nonce is openssl's.
    tsa.rewrite = lambda query: openssl_query(hashlib.sha256(CHECKPOINT).digest())
    with pytest.raises(TimestampError, match="nonce is not the request's"):
        await TimestampAuthority(tsa.url, tsa.ca_path).stamp(CHECKPOINT)


async def test_a_refused_request_names_the_status(tmp_path: Path) -> None:
    with running_tsa(tmp_path / "tsa", digests="sha256") as tsa:
        with pytest.raises(TimestampError, match="rejected with status rejection: Message digest algorithm"):
            await TimestampAuthority(tsa.url, tsa.ca_path, digest="sha512").stamp(CHECKPOINT)
        token = await TimestampAuthority(tsa.url, tsa.ca_path).stamp(CHECKPOINT)
    with pytest.raises(TimestampError, match="hashed with 2.16.840.1.101.3.4.2.1, not sha512"):
        verify_token(CHECKPOINT, token, TimestampTrust.from_pem(tsa.ca_path), digest="sha512")


def test_what_is_not_a_token_is_rejected(tsa: Tsa) -> None:
    with pytest.raises(TimestampError, match="not an RFC 3161 TimeStampResp"):
        verify_token(CHECKPOINT, b"\x30\x03\x02\x01\x00", TimestampTrust.from_pem(tsa.ca_path))


def test_configuration_errors_are_named(tsa: Tsa, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be http:// or https://, not 'ftp://tsa.example/'"):
        TimestampAuthority("ftp://user:secret@tsa.example/", tsa.ca_path)
    with pytest.raises(ValueError, match="no self-signed root certificate in .*tsa.pem"):
        TimestampAuthority("https://tsa.example/", tsa.cert_path)
    with pytest.raises(ValueError, match="not-pem: no PEM certificate"):
        TimestampTrust.from_pem(write(tmp_path / "not-pem", b"hello"))
    secret = TimestampAuthority("https://user:secret@tsa.example/tsr?key=secret", tsa.ca_path)
    assert "secret" not in secret.name
