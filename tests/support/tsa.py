"""`running_tsa`: a real RFC 3161 time-stamping authority on 127.0.0.1 — Debian's `openssl ts -reply`
behind a tiny HTTP handler — with its CA (and optionally an intermediate) made here with `cryptography`.

    with running_tsa(tmp_path) as tsa:
        token = await TimestampAuthority(tsa.url, tsa.ca_path).stamp(b"...")
        assert openssl_verify(data_file, token_file, tsa.ca_path).returncode == 0
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
POLICY = "1.3.6.1.4.1.55555.3161.1"  # a test policy OID the authority puts in every token


def openssl() -> str:
    found = shutil.which("openssl")
    assert found, "the openssl binary is missing: run scripts/install-system-deps"
    return found


@dataclass
class Tsa:
    """A running authority. `status` other than 200 makes it answer that HTTP status with no token;
    `rewrite` turns each incoming query into the one that gets signed (to forge wrong answers)."""

    url: str
    ca_path: Path  # the self-signed root, PEM
    trust_path: Path  # the root and any intermediate, PEM: what a verifier needs when tokens lack the chain
    cert_path: Path  # the TSA's own certificate
    status: int = 200
    rewrite: Callable[[bytes], bytes] | None = None
    queries: list[bytes] = field(default_factory=list)


def _key(kind: KeyType) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@contextmanager
def running_tsa(
    directory: Path,
    *,
    key: KeyType = "ec",
    intermediate: bool = False,
    digests: str = "sha256, sha384, sha512",
    name: str = "Sentinel Test",
) -> Iterator[Tsa]:
    """An authority whose certificate chains to a fresh root (through an intermediate if asked;
    tokens then carry only the TSA certificate, so verifiers need `trust_path`)."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = _key(key)
    root = _certificate(f"{name} Root CA", root_key, None, root_key, ca=True)
    chain = [root]
    signer, signer_key = root, root_key
    if intermediate:
        middle_key = _key(key)
        middle = _certificate(f"{name} Intermediate CA", middle_key, root, root_key, ca=True)
        chain.append(middle)
        signer, signer_key = middle, middle_key
    tsa_key = _key(key)
    tsa_cert = _certificate(f"{name} TSA", tsa_key, signer, signer_key, ca=False)

    ca_path = directory / "ca.pem"
    ca_path.write_bytes(_pem(root))
    trust_path = directory / "trust.pem"
    trust_path.write_bytes(_pem(*chain))
    cert_path = directory / "tsa.pem"
    cert_path.write_bytes(_pem(tsa_cert))
    key_path = directory / "tsa.key"
    key_path.write_bytes(
        tsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (directory / "serial").write_text("01\n")
    config = directory / "ts.cnf"
    config.write_text(
        "[ tsa ]\n"
        "default_tsa = tsa_config\n"
        "[ tsa_config ]\n"
        f"dir = {directory}\n"
        "serial = $dir/serial\n"
        "crypto_device = builtin\n"
        "signer_digest = sha256\n"
        f"default_policy = {POLICY}\n"
        f"digests = {digests}\n"
        "accuracy = secs:1\n"
        "ordering = no\n"
        "tsa_name = no\n"
        "ess_cert_id_chain = no\n"
        "ess_cert_id_alg = sha256\n"
    )
    binary = openssl()
    requests = iter(range(1 << 30))

    def reply(query: bytes) -> tuple[int, bytes]:
        # One request at a time (HTTPServer is single-threaded), so the serial file is never raced.
        number = next(requests)
        query_path = directory / f"query-{number}.tsq"
        reply_path = directory / f"reply-{number}.tsr"
        query_path.write_bytes(query)
        signed = subprocess.run(
            [
                binary,
                "ts",
                "-reply",
                "-config",
                str(config),
                "-queryfile",
                str(query_path),
                "-inkey",
                str(key_path),
                "-signer",
                str(cert_path),
                "-out",
                str(reply_path),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if signed.returncode != 0:
            return 500, signed.stderr
        return 200, reply_path.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            tsa.queries.append(query)
            if tsa.status != 200:
                status, body, kind = tsa.status, b"the TSA is configured to fail\n", "text/plain"
            else:
                if self.headers.get("Content-Type") != "application/timestamp-query":
                    status, body, kind = 415, b"expected application/timestamp-query\n", "text/plain"
                else:
                    status, body = reply(tsa.rewrite(query) if tsa.rewrite else query)
                    kind = "application/timestamp-reply" if status == 200 else "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)  # bound and listening: no readiness wait needed
    tsa = Tsa(f"http://127.0.0.1:{server.server_address[1]}/tsr", ca_path, trust_path, cert_path)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-tsa")
    thread.start()
    try:
        yield tsa
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def openssl_verify(data: Path, reply: Path, ca: Path, *untrusted: Path) -> subprocess.CompletedProcess[str]:
    """`openssl ts -verify`: the other implementation's verdict on a TimeStampResp over a file."""
    args = [openssl(), "ts", "-verify", "-data", str(data), "-in", str(reply), "-CAfile", str(ca)]
    for path in untrusted:
        args += ["-untrusted", str(path)]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def openssl_query(digest: bytes) -> bytes:
    """A TimeStampReq for a SHA-256 `digest` made by `openssl ts -query`, with openssl's own nonce."""
    assert len(digest) == hashlib.sha256().digest_size
    return subprocess.run(
        [openssl(), "ts", "-query", "-digest", digest.hex(), "-sha256", "-cert"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
