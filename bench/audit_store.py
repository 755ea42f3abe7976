"""Generate a large, genuine audit trail for benchmarks (issue #21): N records through the real record
and chain code into the embedded store (or Elasticsearch), on every core.

    python bench/audit_store.py --records 1000000 --out /tmp/gen1m
    sentinel audit verify --config /tmp/gen1m/sentinel.yaml            # intact
    sentinel audit show --config /tmp/gen1m/sentinel.yaml <doc_id> --decrypt --reason bench

Every record is what a running Sentinel writes: `sentinel.audit.record.seal_encoded` encrypts the
content fields with AES-256-GCM under the instance's data key of the (simulated) day, computes the
blind index of the end user and links the record to its predecessor; data, index and signing keys
come from a real `KeyRing`, wrapped by a fresh KEK in `OUT/keys/kek.key`. Each instance signs an
Ed25519 checkpoint (`make_checkpoint`) every `audit.checkpoint_every` (1,000) records or
`audit.checkpoint_interval` (300 s) of simulated time, and a last one at the end, as `AuditTrail`
does; rows are `record_row` rows in the store's own schema, keys and checkpoints go through
`EmbeddedStore.put_keys`/`put_checkpoints`. The clock the audit modules read is simulated in the
generating processes, so `recorded_at`, key ids/dates and checkpoint times span the period.

Layout of OUT: `sentinel.yaml` (data_dir OUT, embedded store), `keys/kek.key` (0600),
`audit/store.db`, and `generated.json` (what was generated: counts, period, time taken).

Distributions: `--days` (30) ending now, business-hours-heavy diurnal load (UTC 08-18 on weekdays
weighs 1, other hours 0.15), `--instances` (2) chains sharing the load, 20 API keys and 5,000 Dify
users with Zipf-like weights (5 % of calls without an end user), three models (deepseek-r1 chat
with reasoning, deepseek-v3 chat, bge-m3 embeddings), ~1 % errors, ~0.4 % client aborts, ~0.1 %
rejected, log-normal latencies (TTFT median 0.25 s, chat 8 s, embeddings 0.08 s) and tokens,
prompts of 1-4 KB (median 1.2 KB), answers up to 2.5 KB (median 0.6 KB) and deepseek-r1 reasoning
up to 1.2 KB (about 4.8 KB stored per record, 6 KB on disk with indexes), 2 % of calls with PHI
policy annotations; plus one content-access or admin event per `--events-every` (2,500) records in
the CLI chain `<first>.cli`. What a call was (model, outcome, tokens, content) comes from a pool of
4,096 templates per instance drawn from these distributions; who, when, how long and the ids are
drawn per call.

Speed: one process per instance chain (up to --workers, default: CPUs) seals records and inserts
them itself, `BATCH` rows at a time under a lock shared with the other process (SQLite has one
writer at a time; meanwhile the other one seals), with journal and fsync off for the bulk load;
the store is switched back to WAL at the end. Maintaining the indexes while inserting costs less
than building them afterwards, which reads the whole table once per index. Where the time goes
(CPU per record): `seal_encoded` ~30 us, the insert with its indexes ~20 us (much of it kernel
time for 6 KB of new pages), everything else here ~6 us; so about 30,000 records/s is the ceiling
on two idle cores (1,000,000 records: 53 s, 18,800 records/s, on a shared two-core VM).

Elasticsearch (`--elasticsearch URL`): the rows go to this process, which bulk-indexes them
through `ElasticsearchStore.put_records`, then the keys and checkpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import dataclasses
import hashlib
import math
import multiprocessing
import os
import queue
import random
import sqlite3
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import struct_time
from typing import Any

import numpy as np
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sentinel.audit import chain as chain_module
from sentinel.audit import kek as kek_module
from sentinel.audit import keyring as keyring_module
from sentinel.audit import record as record_module
from sentinel.audit.chain import ChainHead, make_checkpoint
from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import KeyRing, WrappedKey
from sentinel.audit.note import Checkpoint, origin_of, sign_checkpoint
from sentinel.audit.record import EVENT, INTERACTION, Event, seal_encoded
from sentinel.audit.store.embedded import _COLUMNS as COLUMNS
from sentinel.audit.store.embedded import EmbeddedStore, record_row
from sentinel.audit.tlog import CompactRange, leaf_hash
from sentinel.audit.trail import DEFAULT_ORIGIN_PREFIX
from sentinel.interaction import Caller, Interaction, Operation, Outcome, Protocol, Usage

DAY = 86400.0
HOUR = 3600.0
CHECKPOINT_EVERY = 1000
"""`audit.checkpoint_every` default."""
CHECKPOINT_INTERVAL = 300.0
"""`audit.checkpoint_interval` default."""
BATCH = 4000
"""Rows per insert transaction (or message to the Elasticsearch writer)."""


# -- the simulated clock ---------------------------------------------------------------------------
class SimClock:
    """Stands in for the `time` module of the audit modules: `time()` is the simulated now (records'
    `recorded_at`, key creation, checkpoint times), `gmtime()` follows it (the day of a data key)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def gmtime(self, secs: float | None = None) -> struct_time:
        return time.gmtime(self.now if secs is None else secs)

    def strftime(self, format: str, t: struct_time | None = None) -> str:
        return time.strftime(format, self.gmtime() if t is None else t)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_CLOCKED = (record_module, keyring_module, chain_module, kek_module)


@contextmanager
def simulated_time(clock: SimClock) -> Iterator[SimClock]:
    """Make the audit modules read `clock` instead of the wall clock (restored on exit)."""
    saved = [module.time for module in _CLOCKED]
    for module in _CLOCKED:
        setattr(module, "time", clock)  # noqa: B010 (a module global, on purpose)
    try:
        yield clock
    finally:
        for module, original in zip(_CLOCKED, saved, strict=True):
            setattr(module, "time", original)  # noqa: B010


class BenchKeyRing(KeyRing):
    """The real key ring, with lookups done once instead of on every seal: the blind-index key
    (`KeyRing.index_key` searches every known key on each call, and a month of daily data keys makes
    that a noticeable share of sealing), the signing key (unwrapped on each call) and the data key
    of the current (simulated) UTC day. Same keys, same records: nothing is rotated here."""

    def __init__(self, keks: LocalKeyFile, clock: SimClock, keys: Sequence[WrappedKey]) -> None:
        super().__init__(keks, keys=keys)
        self.clock = clock
        self._index: bytes | None = None
        self._signing: tuple[str, Ed25519PrivateKey] | None = None
        self._today: tuple[int, tuple[str, AESGCM]] | None = None

    def index_key(self) -> bytes:
        if self._index is None:
            self._index = super().index_key()
        return self._index

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        if self._signing is None:
            self._signing = super().signing_key()
        return self._signing

    def current_data_key(self) -> tuple[str, AESGCM]:
        day = int(self.clock.now // DAY)  # the UTC day `KeyRing` names its data keys by
        if self._today is None or self._today[0] != day:
            self._today = day, super().current_data_key()
        return self._today[1]


# -- what the records say --------------------------------------------------------------------------
_WORDS = (
    "patient reports mild moderate severe pain lower back chest abdomen since two three weeks days no fever "
    "history of hypertension diabetes asthma medication dose daily twice metformin lisinopril ibuprofen "
    "allergy penicillin blood pressure glucose level normal elevated follow up appointment referral "
    "cardiology summarize discharge note please draft letter insurance claim prior authorization code "
    "diagnosis treatment plan imaging MRI CT scan results unremarkable lab values hemoglobin creatinine "
    "the and with for of to in on at is was were has have be should could would may a an this that "
    "recommend consider evaluate monitor symptoms onset duration frequency nausea dizziness fatigue cough"
)
_SYSTEM_PROMPTS = (
    "You are a clinical documentation assistant for a hospital. Answer concisely, cite the guideline you use, "
    "never invent patient data, and flag anything that needs a physician's review. Format lists as bullets.",
    "You are a helpful assistant for the billing department. Use the ICD-10 and CPT codes given in the context; "
    "if a code is missing, say so instead of guessing. Keep answers under 300 words.",
    "You help nurses summarise shift handover notes. Keep the structure: situation, background, assessment, "
    "recommendation. Do not include names unless they appear in the note.",
)
_USER_AGENTS = ("OpenAI/Python 1.59.0", "OpenAI/Python 1.61.1", "dify-api/1.1.3", "python-httpx/0.28.1")
_MODELS = (("deepseek-r1", Operation.CHAT), ("deepseek-v3", Operation.CHAT), ("bge-m3", Operation.EMBEDDINGS))
_MODEL_EDGES = np.array([0.6, 0.85])
_OUTCOMES: tuple[tuple[Outcome, int, str | None, int | None], ...] = (
    (Outcome.OK, 200, None, 200),
    (Outcome.ERROR, 502, "upstream_5xx", 502),
    (Outcome.ERROR, 504, "upstream_timeout", None),
    (Outcome.ABORTED, 499, "client_disconnect", None),
    (Outcome.REJECTED, 413, "request_too_large", None),
)
_OUTCOME_EDGES = np.array([0.985, 0.992, 0.995, 0.999])
_ERROR_MESSAGES = {
    502: '{"object":"error","message":"The server had an error while processing your request.","code":502}',
    504: "upstream did not answer within 60.0 s",
}
_PHI = ("mrn", "ssn", "dob", "phone", "name")


def _corpus(rng: random.Random, size: int) -> str:
    words = rng.choices(_WORDS.split(), k=size // 6)
    out: list[str] = []
    for start in range(0, len(words), 14):
        sentence = " ".join(words[start : start + 14])
        out.append(sentence[:1].upper() + sentence[1:] + ".")
    return " ".join(out)


def _cumulative(n: int, s: float) -> list[float]:
    total, out = 0.0, []
    for i in range(n):
        total += 1.0 / (i + 1) ** s
        out.append(total)
    return out


_VARIANT = str.maketrans("0123456789abcdef", "89ab89ab89ab89ab")


def _uuid7(ms: int, rand: str) -> str:
    """`new_interaction_id`'s shape (UUIDv7) for a given millisecond and 19 random hex digits."""
    t = f"{ms:012x}"
    return f"{t[:8]}-{t[8:]}-7{rand[:3]}-{rand[3].translate(_VARIANT)}{rand[4:7]}-{rand[7:19]}"


class Synth:
    """Interactions of one instance with the distributions in the module docstring.

    What a call was (model, outcome, tokens, content, annotations) comes from a pool of `pool`
    template interactions drawn from those distributions; who made it, when, how long it took and
    its ids are drawn per call, and set on the template just before it is sealed (sealing copies
    what it needs, so the template can be reused for the next call).
    """

    def __init__(self, seed: int, instance: str, pool: int = 4096, content_scale: float = 1.0) -> None:
        self.gen = g = np.random.default_rng(seed)
        text = _corpus(random.Random(1), 256 * 1024)
        people = random.Random(2)  # the same users and keys in every instance
        keys = [f"key-{hashlib.sha256(f'k{i}'.encode()).hexdigest()[:12]}" for i in range(20)]
        key_weights = _cumulative(len(keys), 1.1)
        self.callers: list[Caller] = []
        for i in range(5000):
            key = keys[bisect.bisect(key_weights, people.random() * key_weights[-1])]
            user = f"{hashlib.sha256(f'u{i}'.encode()).hexdigest()[:8]}-{i:04d}-4b6e-9c1d-dify-end-user"
            address = f"10.0.{people.randrange(4)}.{people.randrange(1, 250)}"
            self.callers.append(Caller(user, key, address, people.choice(_USER_AGENTS)))
        # 5 % of calls come from service keys without an end user
        self.callers += [Caller(None, keys[i], "10.0.9.4", "python-httpx/0.28.1") for i in range(15, 20)]
        weights = np.cumsum(1.0 / np.arange(1, 5001) ** 0.9)
        self.caller_weights = np.concatenate([weights / weights[-1] * 0.95, 0.95 + np.arange(1, 6) * 0.01])

        self.templates: list[Interaction] = []
        model = np.searchsorted(_MODEL_EDGES, g.random(pool), side="right").tolist()
        outcome = np.searchsorted(_OUTCOME_EDGES, g.random(pool), side="right").tolist()
        streamed = (g.random(pool) < 0.95).tolist()
        scale = content_scale
        prompt = (np.clip(g.lognormal(6.9, 0.5, pool), 700, 3700) * scale).astype(np.int64).tolist()  # 1-4 KB
        output = (g.lognormal(5.3, 0.8, pool) * scale).astype(np.int64).tolist()  # median 200 tokens
        reasoning = (g.lognormal(4.8, 0.7, pool) * scale).astype(np.int64).tolist()  # median 120 tokens
        offset = g.integers(0, len(text) - 4000, (pool, 3)).tolist()
        phi = np.where(g.random(pool) < 0.02, g.integers(0, len(_PHI), pool), -1).tolist()
        # per call: duration ~ lognormal(mu, sigma) capped; TTFT for streams
        self.mu, self.sigma, self.cap = np.zeros(pool), np.zeros(pool), np.full(pool, 1e9)
        self.streams = np.zeros(pool, dtype=bool)
        for i in range(pool):
            name, operation = _MODELS[model[i]]
            result, status, error_type, upstream = _OUTCOMES[outcome[i]]
            ok, chat = result is Outcome.OK, operation is Operation.CHAT
            content = text[offset[i][0] : offset[i][0] + prompt[i]]
            input_tokens = (prompt[i] + 230) // 4
            stream, response, thought, output_tokens, reasoning_tokens = False, None, None, 0, 0
            if chat:
                stream = streamed[i]
                messages: Any = [
                    {"role": "system", "content": _SYSTEM_PROMPTS[i % len(_SYSTEM_PROMPTS)]},
                    {"role": "user", "content": content},
                ]
                self.mu[i], self.sigma[i] = 2.08, 0.7  # median 8 s
                if result is not Outcome.REJECTED:
                    output_tokens = int(output[i])
                    if ok or result is Outcome.ABORTED:
                        length = min(max(output_tokens * 3, 80), 2500) // (1 if ok else 3)
                        response = text[offset[i][1] : offset[i][1] + length]
                    if name == "deepseek-r1":
                        reasoning_tokens = int(reasoning[i])
                        length = min(max(reasoning_tokens * 3, 80), 1200)
                        thought = text[offset[i][2] : offset[i][2] + length]
                        output_tokens += reasoning_tokens
            else:
                messages = [content]
                self.mu[i], self.sigma[i] = -2.526, 0.5  # median 0.08 s
            self.streams[i] = stream
            if result is Outcome.ERROR:
                self.cap[i] = 30.0
            elif result is Outcome.REJECTED:
                self.mu[i], self.sigma[i], input_tokens = math.log(0.0004), 0.0, 0
            annotations: dict[str, Any] = {}
            if phi[i] >= 0:
                annotations = {
                    "policy": {
                        "version": "sha256:3f9a0c1d2e4b5a6c7d8e9f0",
                        "actions": [{"rule": "phi", "action": "flag", "stage": "request", "count": 1}],
                        "phi": {"request": {_PHI[phi[i]]: 1}},
                    }
                }
            self.templates.append(
                Interaction(
                    id="",
                    started_at=0.0,
                    method="POST",
                    path="/v1/chat/completions" if chat else "/v1/embeddings",
                    instance=instance,
                    protocol=Protocol.OPENAI,
                    operation=operation,
                    provider="openai",
                    stream=stream,
                    model_requested=name,
                    model_returned=name if upstream is not None else None,
                    sampling={"temperature": 0.6, "max_tokens": 4096} if chat else {},
                    request_json_valid=True,
                    request_messages=messages,
                    response_text=response,
                    reasoning_text=thought,
                    finish_reason=("stop" if output_tokens < 3000 else "length") if ok else None,
                    usage=(
                        Usage(
                            input_tokens, output_tokens, input_tokens + output_tokens, reasoning_tokens or None, "usage"
                        )
                        if ok
                        else Usage()
                    ),
                    overhead_s=0.0006,
                    status_code=status,
                    upstream_status=upstream,
                    outcome=result,
                    error_type=error_type,
                    error_message=_ERROR_MESSAGES.get(status) if result is Outcome.ERROR else None,
                    request_bytes=prompt[i] + 400,
                    response_bytes=output_tokens * 6 if stream else output_tokens * 4 + 300,
                    chunks=output_tokens + 2 if stream else 1,
                    annotations=annotations,
                )
            )

    def hour(self, begin: float, n: int) -> Calls:
        """`n` calls started in the hour from `begin`."""
        g = self.gen
        template = g.integers(0, len(self.templates), n)
        started = begin + g.random(n) * HOUR
        duration = np.minimum(
            np.exp(self.mu[template] + self.sigma[template] * g.standard_normal(n)), self.cap[template]
        )
        ttft = np.where(self.streams[template], np.minimum(g.lognormal(-1.386, 0.6, n), duration), np.nan)  # 0.25 s
        caller = np.searchsorted(self.caller_weights, g.random(n), side="right")
        return Calls(
            done=started + duration,
            template=template.tolist(),
            started=started.tolist(),
            duration=duration.tolist(),
            ttft=[None if t != t else t for t in ttft.tolist()],
            caller=caller.tolist(),
            ids=g.bytes(n * 34).hex(),
        )

    def call(self, calls: Calls, i: int) -> Interaction:
        """Call `i` of `calls`, ready to seal."""
        it = self.templates[calls.template[i]]
        at, duration, h = calls.started[i], calls.duration[i], calls.ids[i * 68 : i * 68 + 67]
        it.id = _uuid7(int(at * 1000), h)
        it.started_at = at
        it.trace_id = h[19:51]
        it.span_id = h[51:67]
        it.caller = self.callers[calls.caller[i]]
        it.duration_s = duration
        it.ttft_s = calls.ttft[i]
        it.upstream_duration_s = duration - 0.0006 if it.upstream_status is not None else None
        return it


@dataclass(slots=True)
class Calls:
    """One hour of one instance's calls (columns)."""

    done: Any
    """When each call completed (numpy array): the order they are sealed in."""
    template: list[int]
    started: list[float]
    duration: list[float]
    ttft: list[float | None]
    caller: list[int]
    ids: str
    """68 random hex digits per call."""


def hour_counts(total: int, start: float, hours: int) -> list[int]:
    """`total` arrivals spread over `hours` hours from `start`, heavier in business hours."""
    weights = []
    for h in range(hours):
        tm = time.gmtime(start + (h + 0.5) * HOUR)
        weights.append(1.0 if 8 <= tm.tm_hour < 18 and tm.tm_wday < 5 else 0.15)
    whole, acc, out, before = sum(weights), 0.0, [], 0
    for w in weights:
        acc += w
        upto = round(total * acc / whole)
        out.append(upto - before)
        before = upto
    return out


# -- one chain, as `AuditTrail` writes it ----------------------------------------------------------
@dataclass
class Chain:
    instance: str
    keyring: KeyRing
    clock: SimClock
    head: ChainHead = field(default_factory=ChainHead)
    last_checkpoint: dict[str, Any] | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    tree: CompactRange = field(default_factory=CompactRange)
    """The chain's Merkle tree, as the trail keeps it: each checkpoint carries its signed note."""

    def append(self, kind: str, interaction: Interaction | None = None, event: Event | None = None) -> tuple[Any, ...]:
        last = self.last_checkpoint
        if last is not None and last["seq"] < self.head.seq and self.clock.now - last["time"] >= CHECKPOINT_INTERVAL:
            # the trail's ticker signs a chain with unsigned records once the interval has passed
            at, self.clock.now = self.clock.now, max(last["time"] + CHECKPOINT_INTERVAL, self.head.recorded_at)
            self.checkpoint()
            self.clock.now = at
        doc, stored = seal_encoded(
            self.keyring,
            instance=self.instance,
            seq=self.head.seq + 1,
            prev_hash=self.head.hash,
            kind=kind,
            interaction=interaction,
            event=event,
        )
        self.head = ChainHead(doc["seq"], doc["hash"], doc["recorded_at"])
        self.tree.append(leaf_hash(stored))
        if self.last_checkpoint is None or self.head.seq - self.last_checkpoint["seq"] >= CHECKPOINT_EVERY:
            self.checkpoint()  # the first commit, then every `checkpoint_every` records
        return record_row(doc, stored)

    def checkpoint(self) -> None:
        if self.head.seq and (self.last_checkpoint is None or self.last_checkpoint["seq"] < self.head.seq):
            kid, key = self.keyring.signing_key()
            note = sign_checkpoint(
                Checkpoint(origin_of(DEFAULT_ORIGIN_PREFIX, self.instance), self.head.seq, self.tree.root()), key
            )
            self.last_checkpoint = make_checkpoint(self.instance, self.head, self.last_checkpoint, kid, key, note)
            self.checkpoints.append(self.last_checkpoint)


def _event(rng: random.Random, at: float, seq: int, instance: str) -> Event:
    if rng.random() < 0.8:
        return Event(
            "content_access",
            "admin-api:auditor",
            {"record": f"{instance}:{max(seq, 1):012d}", "interaction": None},
            reason=rng.choice(["patient complaint #4711", "quality review Q3", "legal hold request LH-22"]),
            time=at,
        )
    return Event("admin_auth_failed", "admin-api", {"reason": "invalid", "path": "/audit/records"}, time=at)


# -- the generating processes ----------------------------------------------------------------------
@dataclass
class WorkerPlan:
    number: int
    instances: list[tuple[str, int]]
    """(name, records) of the chains this worker writes."""
    events: int
    events_chain: str | None
    start: float
    hours: int
    seed: int
    keks: LocalKeyFile
    shared: list[WrappedKey]
    """The deployment's blind-index key, known to every instance."""
    store: Path | None
    """The embedded store to insert into (under `lock`); None: send rows to the parent (Elasticsearch)."""
    content_scale: float = 1.0
    """Prompt, answer and reasoning sizes times this (0.3: about the 2 KB records of a short-answer soak)."""


class StoreRows:
    """Inserts rows into the embedded store, one batch at a time under the writers' lock: SQLite
    takes one writer at a time, and the other process seals records meanwhile."""

    def __init__(self, path: Path, lock: Any) -> None:
        self.lock = lock
        self.db = sqlite3.connect(path, isolation_level=None, timeout=600)
        self.db.execute("PRAGMA journal_mode=OFF")  # a bulk load into a new file: nothing to roll back to
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-65536")
        self.sql = f"INSERT INTO records ({COLUMNS}) VALUES ({', '.join(['?'] * (COLUMNS.count(',') + 1))})"

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(self.sql, rows)
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class SentRows:
    def __init__(self, out: Any, number: int) -> None:
        self.out, self.number = out, number

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        self.out.put(("rows", self.number, rows))

    def close(self) -> None:
        pass


def _work(plan: WorkerPlan, lock: Any, out: Any) -> None:
    try:
        rows = StoreRows(plan.store, lock) if plan.store is not None else SentRows(out, plan.number)
        try:
            out.put(("done", plan.number, _generate(plan, rows)))
        finally:
            rows.close()
    except BaseException:
        out.put(("error", plan.number, traceback.format_exc()))


def _generate(plan: WorkerPlan, sink: StoreRows | SentRows) -> dict[str, Any]:
    clock = SimClock(plan.start)
    with simulated_time(clock):
        chains = [Chain(name, BenchKeyRing(plan.keks, clock, plan.shared), clock) for name, _ in plan.instances]
        synths = [
            Synth(plan.seed * 1000 + plan.number * 10 + i, name, content_scale=plan.content_scale)
            for i, (name, _) in enumerate(plan.instances)
        ]
        per_hour = [hour_counts(count, plan.start, plan.hours) for _, count in plan.instances]
        events, event_hours = None, [0] * plan.hours
        if plan.events_chain is not None:
            events = Chain(plan.events_chain, BenchKeyRing(plan.keks, clock, plan.shared), clock)
            event_hours = hour_counts(plan.events, plan.start, plan.hours)
        rng = random.Random(plan.seed * 7919 + plan.number)
        rows: list[tuple[Any, ...]] = []
        written = 0
        for hour in range(plan.hours):
            begin = plan.start + hour * HOUR
            calls = [synth.hour(begin, per_hour[c][hour]) for c, synth in enumerate(synths)]
            event_times = sorted(begin + rng.random() * HOUR for _ in range(event_hours[hour]))
            # seal in completion order, as a live trail does
            done = np.concatenate([batch.done for batch in calls] + [np.array(event_times)])
            chain = np.concatenate(
                [np.full(len(batch.done), c) for c, batch in enumerate(calls)] + [np.full(len(event_times), -1)]
            )
            index = np.concatenate([np.arange(len(batch.done)) for batch in calls] + [np.arange(len(event_times))])
            order = np.argsort(done, kind="stable")
            for at, c, i in zip(done[order].tolist(), chain[order].tolist(), index[order].tolist(), strict=True):
                if at > clock.now:
                    clock.now = at
                if c >= 0:
                    rows.append(chains[c].append(INTERACTION, interaction=synths[c].call(calls[c], i)))
                else:
                    assert events is not None
                    rows.append(events.append(EVENT, event=_event(rng, at, chains[0].head.seq, chains[0].instance)))
                if len(rows) >= BATCH:
                    sink.write(rows)
                    written += len(rows)
                    rows = []
        clock.now += 5.0
        everything = [*chains, *([events] if events is not None else [])]
        for each in everything:
            each.checkpoint()  # `AuditTrail.stop` signs a last one
        sink.write(rows)
        keys = {(k.kid, k.kek_id): k.to_dict() for each in everything for k in each.keyring.all_keys()}
        return {
            "records": written + len(rows),
            "chains": {each.instance: each.head.seq for each in everything},
            "checkpoints": [c for each in everything for c in each.checkpoints],
            "keys": list(keys.values()),
        }


# -- writing ---------------------------------------------------------------------------------------
@dataclass
class Result:
    out: Path
    records: int
    """Records written in all chains (interactions and events)."""
    interactions: int
    events: int
    chains: dict[str, int]
    checkpoints: int
    keys: int
    start: float
    end: float
    seconds: float
    load_seconds: float
    """Until every record was written (the rest: back to WAL, keys, checkpoints)."""
    store_bytes: int

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def config_text(out: Path, elasticsearch: str | None) -> str:
    lines = [
        "# Written by bench/audit_store.py: a generated audit trail. Check it with",
        f"#   sentinel audit verify --config {out / 'sentinel.yaml'}",
        f"data_dir: {orjson.dumps(str(out)).decode()}",
        "audit:",
        f"  store: {'elasticsearch' if elasticsearch else 'embedded'}",
    ]
    if elasticsearch:
        lines += ["elasticsearch:", f"  url: {orjson.dumps(elasticsearch).decode()}"]
    return "\n".join(lines) + "\n"


def generate(
    out: Path,
    records: int,
    *,
    instances: int = 2,
    days: float = 30.0,
    end: float | None = None,
    seed: int = 7,
    workers: int | None = None,
    events_every: int = 2500,
    elasticsearch: str | None = None,
    content_scale: float = 1.0,
) -> Result:
    """Write `records` interaction records (plus one event per `events_every`) into a new data dir `out`."""
    began = time.perf_counter()
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    end = time.time() if end is None else end
    start = end - days * DAY
    out.mkdir(parents=True, exist_ok=True)
    (out / "sentinel.yaml").write_text(config_text(out, elasticsearch))
    with simulated_time(SimClock(start)):
        keks = LocalKeyFile.create(out / "keys" / "kek.key")
        shared = KeyRing(keks)
        shared.index_key()
    store = None if elasticsearch else out / "audit" / "store.db"
    if store is not None:
        _prepare(store)
    names = [f"sentinel-{chr(ord('a') + i)}" if instances <= 26 else f"sentinel-{i:03d}" for i in range(instances)]
    shares = [records // instances + (i < records % instances) for i in range(instances)]
    workers = max(1, min(workers or os.cpu_count() or 1, instances))
    plans = [
        WorkerPlan(
            number=w,
            instances=[(names[i], shares[i]) for i in range(w, instances, workers)],
            events=records // events_every if events_every else 0,
            events_chain=f"{names[0]}.cli" if w == 0 and events_every and records >= events_every else None,
            start=start,
            hours=max(1, math.ceil(days * 24)),
            seed=seed,
            keks=keks,
            shared=shared.all_keys(),
            store=store,
            content_scale=content_scale,
        )
        for w in range(workers)
    ]
    context = multiprocessing.get_context("spawn")  # no fork of a process that may run threads
    lock, messages = context.Lock(), context.Queue(maxsize=4 * workers)
    processes = [context.Process(target=_work, args=(plan, lock, messages), daemon=True) for plan in plans]
    for process in processes:
        process.start()
    try:
        if store is not None:
            summaries = [payload for _, payload in _messages(messages, workers, processes)]
            loaded = time.perf_counter() - began
            asyncio.run(_with_store(store, summaries))  # back to WAL; keys and checkpoints as shipped
        else:
            summaries = asyncio.run(_write_elasticsearch(out, messages, workers, processes))
            loaded = time.perf_counter() - began
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    chains = {name: seq for s in summaries for name, seq in sorted(s["chains"].items())}
    written = sum(s["records"] for s in summaries)
    events = sum(seq for name, seq in chains.items() if name.endswith(".cli"))
    result = Result(
        out=out,
        records=written,
        interactions=written - events,
        events=events,
        chains=dict(sorted(chains.items())),
        checkpoints=sum(len(s["checkpoints"]) for s in summaries),
        keys=len({(k["kid"], k["kek_id"]) for s in summaries for k in s["keys"]}),
        start=start,
        end=end,
        seconds=time.perf_counter() - began,
        load_seconds=loaded,
        store_bytes=store.stat().st_size if store is not None else 0,
    )
    manifest = {k: v for k, v in dataclasses.asdict(result).items() if k != "out"}
    manifest = {**manifest, "seed": seed, "content_scale": content_scale}
    (out / "generated.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return result


def _messages(messages: Any, workers: int, processes: Sequence[Any]) -> Iterator[tuple[str, Any]]:
    """("rows", rows) (Elasticsearch) and ("done", summary) from the workers until all are done."""
    done = 0
    while done < workers:
        try:
            kind, number, payload = messages.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a generator process died (exit code {dead[0].exitcode})") from None
            continue
        if kind == "error":
            raise RuntimeError(f"generator process {number} failed:\n{payload}")
        if kind == "done":
            done += 1
        yield kind, payload


def _prepare(path: Path) -> None:
    """The store's own schema, out of WAL mode: the generating processes write without a journal."""
    asyncio.run(_with_store(path, None))
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
    finally:
        db.close()


async def _with_store(path: Path, summaries: list[dict[str, Any]] | None) -> None:
    store = EmbeddedStore(path)
    await store.open()
    try:
        if summaries is not None:
            await store.put_keys([k for s in summaries for k in s["keys"]])
            await store.put_checkpoints([c for s in summaries for c in s["checkpoints"]])
    finally:
        await store.close()


async def _write_elasticsearch(
    out: Path, messages: Any, workers: int, processes: Sequence[Any]
) -> list[dict[str, Any]]:
    """Bulk-index through `ElasticsearchStore` (the store `sentinel` opens for this config)."""
    from sentinel.audit.service import open_store
    from sentinel.config import load_settings

    store = open_store(load_settings(out / "sentinel.yaml"))
    await store.open()
    summaries = []
    try:
        await store.setup()  # type: ignore[attr-defined]  # template, ILM policy, data stream (idempotent)
        for kind, payload in _messages(messages, workers, processes):
            if kind == "rows":
                await store.put_records([(row[0], row[-1].encode()) for row in payload])
            else:
                summaries.append(payload)
        await store.put_keys([k for s in summaries for k in s["keys"]])
        await store.put_checkpoints([c for s in summaries for c in s["checkpoints"]])
    finally:
        await store.close()
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="interaction records (default 1,000,000)")
    parser.add_argument("--out", type=Path, required=True, help="new data directory to create")
    parser.add_argument("--instances", type=int, default=2, help="instance chains (default 2)")
    parser.add_argument("--days", type=float, default=30.0, help="period ending now (default 30)")
    parser.add_argument("--end", type=float, help="end of the period, Unix seconds (default: now)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, help="sealing processes (default: CPUs, at most one per instance)")
    parser.add_argument("--events-every", type=int, default=2500, help="one audit event per N records (0: none)")
    parser.add_argument("--elasticsearch", metavar="URL", help="bulk-index into Elasticsearch instead")
    parser.add_argument(
        "--content-scale", type=float, default=1.0, help="content sizes times this (0.3: ~2 KB records)"
    )
    args = parser.parse_args()
    result = generate(
        args.out,
        args.records,
        instances=args.instances,
        days=args.days,
        end=args.end,
        seed=args.seed,
        workers=args.workers,
        events_every=args.events_every,
        elasticsearch=args.elasticsearch,
        content_scale=args.content_scale,
    )
    chains = ", ".join(f"{name} {seq:,}" for name, seq in result.chains.items())
    print(
        f"{result.records:,} records ({chains}), {result.checkpoints:,} checkpoints, {result.keys} keys "
        f"in {result.seconds:.1f} s ({result.load_seconds:.1f} s sealing and inserting): "
        f"{result.per_second:,.0f} records/s"
    )
    if result.store_bytes:
        print(f"store {result.out / 'audit' / 'store.db'}: {result.store_bytes / 1e9:.2f} GB")
    print(f"verify: sentinel audit verify --config {result.out / 'sentinel.yaml'}")


if __name__ == "__main__":
    main()
