"""A large embedded audit store, written straight into the store's SQLite schema, for `bench/report.py`.

Rows are what `EmbeddedStore.put_records` would have written: the stored form of each document
(canonical JSON with `hash` last), valid hash chains per instance and Ed25519 checkpoints signed
by a real key every 1,000 records, so chain verification does its full work. Content fields carry
random bytes of realistic length in place of AES-GCM ciphertext (verification never decrypts;
reports only look at which fields are encrypted and under which key id).

Distributions: 30 days ending now, business-hours-heavy diurnal load, 20 API keys and 5,000 Dify
users with Zipf-like weights, three models (two chat, one embeddings), ~1 % errors, ~0.4 % client
aborts, log-normal latencies (TTFT median 0.25 s, chat 8 s, embeddings 0.08 s), a few hundred
content-access and admin events.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sentinel.audit.chain import ChainHead, make_checkpoint
from sentinel.audit.record import SCHEMA_VERSION, encode
from sentinel.audit.store.embedded import EmbeddedStore, record_row

DAY = 86400.0


def _weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (i + 1) ** s for i in range(n)]


def _blob(rng: random.Random, size: int, kid: str) -> dict[str, str]:
    return {
        "kid": kid,
        "nonce": base64.b64encode(rng.randbytes(12)).decode(),
        "ct": base64.b64encode(rng.randbytes(size)).decode(),
    }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _times(rng: random.Random, n: int, start: float, end: float) -> list[float]:
    """n arrival times, denser in business hours (UTC 08-18, weekdays)."""
    out: list[float] = []
    while len(out) < n:
        t = rng.uniform(start, end)
        tm = time.gmtime(t)
        weight = 1.0 if 8 <= tm.tm_hour < 18 and tm.tm_wday < 5 else 0.15
        if rng.random() < weight:
            out.append(t)
    out.sort()
    return out


def interactions(rng: random.Random, n: int, start: float, end: float) -> Iterator[dict[str, Any]]:
    """Interaction metadata documents (without chain fields), in time order."""
    keys = [f"key-{hashlib.sha256(f'k{i}'.encode()).hexdigest()[:12]}" for i in range(20)]
    users = [hashlib.sha256(f"u{i}".encode()).hexdigest()[:32] for i in range(5000)]
    key_w, user_w = _weights(len(keys)), _weights(len(users), 0.9)
    models = [("deepseek-r1", "chat", 0.6), ("deepseek-v3", "chat", 0.25), ("bge-m3", "embeddings", 0.15)]
    for started in _times(rng, n, start, end):
        model, operation, _ = rng.choices(models, [m[2] for m in models])[0]
        stream = operation == "chat" and rng.random() < 0.95
        roll = rng.random()
        outcome, status, error_type = "ok", 200, None
        if roll < 0.007:
            outcome, status, error_type = "error", 502, "upstream_5xx"
        elif roll < 0.010:
            outcome, status, error_type = "error", 504, "upstream_timeout"
        elif roll < 0.014:
            outcome, status, error_type = "aborted", 499, "client_disconnect"
        elif roll < 0.015:
            outcome, status, error_type = "rejected", 413, "request_too_large"
        if operation == "embeddings":
            duration, ttft = rng.lognormvariate(math.log(0.08), 0.5), None
        else:
            ttft = rng.lognormvariate(math.log(0.25), 0.6) if stream else None
            duration = rng.lognormvariate(math.log(8.0), 0.7)
        input_tokens = int(rng.lognormvariate(math.log(600), 0.8))
        output_tokens = 0 if operation == "embeddings" else int(rng.lognormvariate(math.log(400), 0.8))
        annotations: dict[str, Any] = {}
        if rng.random() < 0.02:
            annotations = {"policy": {"version": "p-1", "phi": {"request": {rng.choice(["mrn", "ssn", "dob"]): 1}}}}
        yield {
            "id": f"{int(started * 1000):012x}-{rng.getrandbits(64):016x}",
            "started_at": started,
            "method": "POST",
            "path": "/v1/embeddings" if operation == "embeddings" else "/v1/chat/completions",
            "query": "",
            "trace_id": f"{rng.getrandbits(128):032x}",
            "span_id": f"{rng.getrandbits(64):016x}",
            "protocol": "openai",
            "operation": operation,
            "provider": "openai",
            "stream": stream,
            "model_requested": model,
            "model_returned": model,
            "sampling": {"temperature": 0.6} if operation == "chat" else {},
            "caller": {
                "api_key_id": rng.choices(keys, key_w)[0],
                "address": f"10.0.{rng.randrange(4)}.{rng.randrange(1, 250)}",
                "user_agent": "OpenAI/Python 1.59.0",
                "user_index": rng.choices(users, user_w)[0],
            },
            "request_json_valid": True,
            "finish_reason": "stop" if outcome == "ok" else None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
                "reasoning_tokens": None,
                "source": "usage",
            },
            "ttft_s": ttft,
            "duration_s": duration,
            "upstream_duration_s": duration - 0.0005,
            "overhead_s": 0.0005,
            "status_code": status,
            "upstream_status": status if status < 499 or status >= 500 else None,
            "outcome": outcome,
            "error_type": error_type,
            "request_bytes": input_tokens * 4,
            "response_bytes": output_tokens * 6,
            "chunks": output_tokens if stream else 1,
            "content_truncated": False,
            "annotations": annotations,
        }


class Chain:
    """One instance's chain: seals documents in order and signs a checkpoint every 1,000 records."""

    def __init__(self, instance: str, kid: str, key: Ed25519PrivateKey) -> None:
        self.instance, self.kid, self.key = instance, kid, key
        self.head = ChainHead()
        self.last_checkpoint: dict[str, Any] | None = None
        self.checkpoints: list[dict[str, Any]] = []

    def seal(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        seq = self.head.seq + 1
        doc.update(
            doc_id=f"{self.instance}:{seq:012d}",
            instance=self.instance,
            seq=seq,
            prev_hash=self.head.hash,
            schema_version=SCHEMA_VERSION,
        )
        body = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        doc["hash"] = hashlib.sha256(body).hexdigest()
        self.head = ChainHead(seq, doc["hash"], doc["recorded_at"])
        if seq % 1000 == 0:
            self.sign()
        return doc, encode(doc)

    def sign(self) -> None:
        if self.head.seq and (self.last_checkpoint is None or self.last_checkpoint["seq"] < self.head.seq):
            self.last_checkpoint = make_checkpoint(self.instance, self.head, self.last_checkpoint, self.kid, self.key)
            self.checkpoints.append(self.last_checkpoint)


def generate(path: Path, count: int, *, seed: int = 7, days: float = 30.0, end: float | None = None) -> dict[str, Any]:
    """Write `count` interaction records (plus a few hundred events) into a new embedded store at `path`."""
    import asyncio

    if path.exists():
        raise FileExistsError(path)
    asyncio.run(_create_schema(path))
    rng = random.Random(seed)
    end = end if end is not None else time.time()
    start = end - days * DAY
    signing = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    public = signing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    data_kids = [f"dk-{time.strftime('%Y%m%d', time.gmtime(start + d * DAY))}-{d:06x}" for d in range(int(days) + 1)]
    keys = [
        {"kid": kid, "purpose": "data", "kek_id": "kek-bench", "wrapped": "", "created": start + d * DAY}
        for d, kid in enumerate(data_kids)
    ]
    keys += [
        {"kid": "ix-bench", "purpose": "index", "kek_id": "kek-bench", "wrapped": "", "created": start},
        {
            "kid": "sk-bench",
            "purpose": "signing",
            "kek_id": "kek-bench",
            "wrapped": "",
            "created": start,
            "public": base64.b64encode(public).decode(),
        },
    ]
    chains = [Chain(f"sentinel-{c}", "sk-bench", signing) for c in "ab"]
    events = Chain("sentinel-a.cli", "sk-bench", signing)
    sql = (
        "INSERT INTO records (doc_id, instance, seq, kind, recorded_at, started_at, interaction_id, model, operation, "
        "outcome, status, error_type, api_key_id, user_index, stream, duration_s, ttft_s, input_tokens, output_tokens, "
        "event_type, prev_hash, hash, body) VALUES (" + ", ".join("?" * 23) + ")"
    )
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.executemany(
        "INSERT INTO keys (kid, kek_id, body) VALUES (?, ?, ?)",
        [(k["kid"], k["kek_id"], orjson.dumps(k).decode()) for k in keys],
    )
    rows: list[tuple[Any, ...]] = []
    db.execute("BEGIN")
    for n, meta in enumerate(interactions(rng, count, start, end)):
        started = meta["started_at"]
        day = min(int((started - start) // DAY), len(data_kids) - 1)
        kid = data_kids[day]
        encrypted = {
            "caller_user": _blob(rng, 40, kid),
            "request_messages": _blob(rng, rng.randrange(300, 1500), kid),
        }
        if meta["operation"] != "embeddings":
            encrypted["response_text"] = _blob(rng, rng.randrange(300, 2500), kid)
        doc = {
            "kind": "interaction",
            "@timestamp": _iso(started),
            "recorded_at": started + meta["duration_s"],
            "interaction": meta,
            "encrypted": encrypted,
        }
        doc, body = chains[n % 2].seal(doc)
        rows.append(record_row(doc, body))
        if n % 4000 == 3999:  # a decrypt or an admin event now and then
            kind = "content_access" if rng.random() < 0.8 else "admin_auth_failed"
            details = (
                {"record": doc["doc_id"], "interaction": meta["id"]}
                if kind == "content_access"
                else {"reason": "invalid", "path": "/audit/records"}
            )
            event = {
                "kind": "event",
                "@timestamp": _iso(started + 1),
                "recorded_at": started + 1,
                "event": {"type": kind, "actor": "admin-api:auditor", "details": details},
                "encrypted": {"reason": _blob(rng, 60, kid)} if kind == "content_access" else {},
            }
            event, body = events.seal(event)
            rows.append(record_row(event, body))
        if len(rows) >= 20_000:
            db.executemany(sql, rows)
            rows.clear()
    db.executemany(sql, rows)
    for chain in [*chains, events]:
        chain.sign()
        db.executemany(
            "INSERT INTO checkpoints (doc_id, instance, seq, body) VALUES (?, ?, ?, ?)",
            [(c["doc_id"], c["instance"], c["seq"], orjson.dumps(c).decode()) for c in chain.checkpoints],
        )
    db.execute("COMMIT")
    db.close()
    return {"records": count, "start": start, "end": end, "bytes": path.stat().st_size, "signing_public": public}


async def _create_schema(path: Path) -> None:
    store = EmbeddedStore(path)
    await store.open()
    await store.close()


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    began = time.perf_counter()
    info = generate(target, n)
    print(f"{n} records, {info['bytes'] / 1e6:.0f} MB in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    os.sync()
