"""Signing issued reports and checking them later: `report_issued` events, signatures, `verify_report`.

A report's SHA-256 is signed with the audit trail's Ed25519 signing key (the checkpoint key, `sk-…`),
over a domain-separated message (`sentinel-report/v1\n<sha256 hex>`), so a report signature can never
pass for a checkpoint signature or the other way round. The hash, signature and key id go into the
trail as a `report_issued` event (and into a `<file>.sig.json` sidecar for offline checks); a report
is genuine when its hash is named by an intact `report_issued` record whose signature verifies.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sentinel.audit.chain import signature_valid as checkpoint_signature_valid
from sentinel.audit.record import stored_hashes
from sentinel.audit.signer import Signer
from sentinel.audit.spool import SpoolUnavailable, WriterCopy
from sentinel.audit.store import AuditStore, SearchQuery

DOMAIN = b"sentinel-report/v1\n"
REPORT_ISSUED = "report_issued"


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def sign(sha256: str, key: Signer) -> str:
    return base64.b64encode(key.sign(DOMAIN + sha256.encode())).decode()


def signature_valid(sha256: str, signature: str, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(base64.b64decode(signature), DOMAIN + sha256.encode())
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(slots=True)
class Issued:
    """A rendered, signed and recorded report."""

    report_id: str
    format: str
    media_type: str
    body: bytes
    sha256: str
    signature: str
    kid: str
    audit_record: str | None = None

    def sidecar(self) -> bytes:
        data: bytes = orjson.dumps(
            {
                "report_id": self.report_id,
                "format": self.format,
                "sha256": self.sha256,
                "signature": self.signature,
                "kid": self.kid,
                "algorithm": "Ed25519 over 'sentinel-report/v1\\n' + sha256 hex",
            },
            option=orjson.OPT_INDENT_2,
        )
        return data


@dataclass
class Verdict:
    ok: bool
    sha256: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    issued: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sha256": self.sha256,
            "problems": self.problems,
            "notes": self.notes,
            "issued": self.issued,
        }


async def find_issued(store: AuditStore, sha256: str) -> list[dict[str, Any]]:
    """`report_issued` event records naming this hash (without their `encrypted` part)."""
    docs = await store.search(SearchQuery(kind="event", event_type=REPORT_ISSUED, limit=100_000))
    return [d for d in docs if ((d.get("event") or {}).get("details") or {}).get("sha256") == sha256]


def pending_issued(writers: Sequence[WriterCopy], sha256: str) -> list[tuple[dict[str, Any], bytes]]:
    """`report_issued` records naming this hash that a local writer holds, durable, but has not shipped to
    the store yet (a report verified the moment it was issued), with their stored bytes."""
    found = []
    for writer in writers:
        try:
            bodies = writer.unshipped("event")
        except SpoolUnavailable:
            continue
        for body in bodies:
            if sha256.encode() not in body:
                continue
            doc = orjson.loads(body)
            event = doc.get("event") or {}
            if event.get("type") == REPORT_ISSUED and (event.get("details") or {}).get("sha256") == sha256:
                found.append((doc, body))
    return found


async def _stored_body(store: AuditStore, doc: dict[str, Any]) -> bytes | None:
    """The stored bytes of a record, as verification reads them."""
    seq = int(doc["seq"])
    async for page in store.chain_pages(str(doc["instance"]), seq, seq):
        for record in page:
            if record.doc_id == doc["doc_id"]:
                return record.body
    return None


def _record_intact(doc: dict[str, Any], raw: bytes | None) -> bool:
    if raw is None:
        return False
    claimed, content = stored_hashes(raw)
    return claimed == content == doc.get("hash")


async def record_intact(store: AuditStore, doc: dict[str, Any]) -> bool:
    """Whether a record found through the store's search still has the bytes its hash was computed over."""
    return _record_intact(doc, await _stored_body(store, doc))


async def _sealed(store: AuditStore, doc: dict[str, Any], public_key: Any) -> tuple[bool, str]:
    """Whether a signed checkpoint vouches for the record: the links from it to the first checkpoint at or
    after it are intact and that checkpoint's signature and hash hold."""
    instance, seq = doc["instance"], int(doc["seq"])
    checkpoint = next((c for c in await store.checkpoints(instance) if int(c["seq"]) >= seq), None)
    if checkpoint is None:
        return False, "no signed checkpoint covers the report_issued record yet (it is recent)"
    key = public_key(str(checkpoint.get("kid")))
    if key is None or not checkpoint_signature_valid(checkpoint, key):
        return False, f"checkpoint {checkpoint['doc_id']} is not validly signed"
    previous = None
    async for link in store.chain_links(instance, seq, int(checkpoint["seq"])):
        if link.claimed_hash != link.content_hash or (previous is not None and link.prev_hash != previous):
            return (
                False,
                f"the chain between the record and checkpoint {checkpoint['doc_id']} is broken at {link.doc_id}",
            )
        previous = link.claimed_hash
    if previous != checkpoint["hash"]:
        return False, f"checkpoint {checkpoint['doc_id']} does not vouch for this chain"
    return True, f"sealed by signed checkpoint {checkpoint['doc_id']}"


def verify_offline(public_key: Any, body: bytes, sidecar: dict[str, Any]) -> Verdict:
    """Check a report file against its signature file and pinned keys alone (no audit trail): the file's
    SHA-256 is the one signed, by a pinned key. What the trail adds (that it was recorded as issued,
    by whom, when) is not checked here, and the verdict says so."""
    sha = sha256_hex(body)
    verdict = Verdict(False, sha)
    if sidecar.get("sha256") != sha:
        verdict.problems.append("the file does not match its signature file (SHA-256 differs): the file was modified")
        return verdict
    kid = str(sidecar.get("kid"))
    key = public_key(kid)
    if key is None:
        verdict.problems.append(f"the signing key {kid} is not among the pinned keys")
    elif not signature_valid(sha, str(sidecar.get("signature")), key):
        verdict.problems.append("the signature does not verify with the pinned key")
    if verdict.problems:
        return verdict
    verdict.ok = True
    verdict.issued = {"report_id": sidecar.get("report_id"), "format": sidecar.get("format"), "kid": kid}
    verdict.notes.append("checked offline: the audit trail's report_issued record was not consulted")
    return verdict


async def verify_report(
    store: AuditStore,
    public_key: Any,
    body: bytes,
    sidecar: dict[str, Any] | None = None,
    *,
    writers: Sequence[WriterCopy] = (),
) -> Verdict:
    """Check a report file: its hash is named by an intact, validly signed `report_issued` record, in the
    store or, not shipped there yet, in one of the local `writers`' spools (where it was durable before
    the report was handed out)."""
    sha = sha256_hex(body)
    verdict = Verdict(False, sha)
    if sidecar is not None and sidecar.get("sha256") != sha:
        verdict.problems.append("the file does not match its signature file (SHA-256 differs): the file was modified")
    docs = await find_issued(store, sha)
    raw_rows = {d["doc_id"]: await _stored_body(store, d) for d in docs}
    pending: set[str] = set()
    if not docs and writers:
        for doc, raw in await asyncio.to_thread(pending_issued, writers, sha):
            docs.append(doc)
            raw_rows[doc["doc_id"]] = raw
            pending.add(doc["doc_id"])
    if not docs:
        verdict.problems.append(
            "no report_issued event in the audit trail names this file's SHA-256: "
            "it was modified or not issued by Sentinel"
        )
        return verdict
    for doc in docs:
        details = doc["event"]["details"]
        problems = []
        if not _record_intact(doc, raw_rows.get(doc["doc_id"])):
            problems.append(f"the report_issued record {doc['doc_id']} was altered")
        key = public_key(str(details.get("kid")))
        if key is None:
            problems.append(f"signing key {details.get('kid')} is not trusted (not pinned, or not in the store)")
        elif not signature_valid(sha, str(details.get("signature")), key):
            problems.append("the signature does not verify")
        if sidecar is not None and sidecar.get("signature") not in (None, details.get("signature")):
            problems.append("the signature file's signature differs from the one in the audit trail")
        if problems:
            verdict.problems += problems
            continue
        if doc["doc_id"] in pending:
            sealed, note = (
                False,
                (
                    f"the report_issued record {doc['doc_id']} is durable in the writer's spool and not yet shipped "
                    "to the audit store; no signed checkpoint in the store seals it yet"
                ),
            )
        else:
            sealed, note = await _sealed(store, doc, public_key)
        verdict.notes.append(note)
        verdict.issued = {
            "audit_record": doc["doc_id"],
            "time": doc.get("@timestamp"),
            "actor": doc["event"].get("actor"),
            "sealed": sealed,
            **details,
        }
        verdict.ok = not verdict.problems
        return verdict
    return verdict
