"""`PolicyHook`: the policy in force, applied on the request path (a `sentinel.proxy.hooks.RequestHook`).

Per call it parses the body once (orjson), bounds the sampling parameters, scans the prompt for
rule keywords/patterns and PHI, and may rewrite or refuse the request; then it picks a response
filter: none when no response rule applies, an observer that leaves the bytes alone and scans the
answer at its end when rules only flag, or a rewriter that redacts or blocks as the answer streams.
What it did goes into `exchange.annotations["policy"]` (rules, actions, counts, PHI categories;
never the matched text) and into `PolicyMetrics`.
"""

from __future__ import annotations

import logging
from typing import Any
from typing import Protocol as TypingProtocol

import orjson

from sentinel.capture import ollama as ollama_capture
from sentinel.capture import openai as openai_capture
from sentinel.capture.build import api_key_id
from sentinel.capture.facts import ResponseFacts
from sentinel.interaction import ErrorType, Operation, Protocol
from sentinel.policy import responses
from sentinel.policy.compiled import Active, Policy
from sentinel.policy.keys import Ambiguous, canonicalise
from sentinel.policy.matching import Detector, Findings, Scanner, redact_parts, spanning
from sentinel.policy.metrics import PolicyMetrics
from sentinel.policy.parsing import Unparseable, duplicate_key, parse
from sentinel.policy.payload import TooDeep, request_texts, token_ids
from sentinel.policy.sampling import apply_bounds
from sentinel.policy.streams import Blocked, NdjsonRewriter, SseRewriter, rewrite_json
from sentinel.proxy.errors import error_body
from sentinel.proxy.exchange import Exchange
from sentinel.proxy.hooks import Refusal, ResponseFilter, StopResponse

log = logging.getLogger("sentinel.policy")

ANNOTATION = "policy"
NATIVE_COMPLETION = "/completion"
"""llama.cpp's native completion route (`/completions`, its alias, is classified as OpenAI's and its
native answers are recognised by their shape)."""
BLOCK_STATUS = 400
_PENDING_LIMIT = 10_000


class PolicySource(TypingProtocol):
    """Anything holding the policy in force (`PolicyStore`, or a fixed one in tests)."""

    @property
    def current(self) -> Policy | None: ...


def block_message(detector: Detector, stage: str) -> str:
    if detector.message:
        return detector.message
    what = "request" if stage == "request" else "response"
    if detector.category is not None:
        return (
            f"the {what} was blocked by Sentinel policy: it contains protected health information ({detector.category})"
        )
    return f"the {what} was blocked by Sentinel policy rule {detector.rule!r}"


def _notes(ex: Exchange, policy: Policy) -> dict[str, Any]:
    notes: dict[str, Any] | None = ex.annotations.get(ANNOTATION)
    if notes is None:
        notes = ex.annotations[ANNOTATION] = {"version": policy.digest[:23]}
    return notes


def record(notes: dict[str, Any], findings: Findings, stage: str) -> None:
    """Add a scan's findings to a record's policy annotations: rule hits and PHI counts, no text."""
    actions: list[dict[str, Any]] = notes.setdefault("actions", [])
    for (rule, action), count in findings.rules.items():
        actions.append({"rule": rule, "action": action, "stage": stage, "count": count})
    if findings.phi:
        phi: dict[str, dict[str, int]] = notes.setdefault("phi", {})
        mine = phi.setdefault(stage, {})
        for category, count in findings.phi.items():
            mine[category] = mine.get(category, 0) + count


class PolicyHook:
    """Applies `source.current` to every call; does nothing while no policy is loaded."""

    def __init__(self, source: PolicySource, metrics: PolicyMetrics | None = None) -> None:
        self.source = source
        self.metrics = metrics
        self._pending: dict[str, tuple[Policy, Active]] = {}
        """Response rules chosen in on_request, taken by response_filter for the same exchange."""

    def on_request(self, exchange: Exchange) -> Refusal | None:
        try:
            return self._on_request(exchange)
        except Exception:
            # Fail closed: a policy that silently stopped applying would be a compliance gap.
            log.exception("policy evaluation failed for %s; refusing the call", exchange.id)
            self._pending.pop(exchange.id, None)
            return Refusal(500, ErrorType.INTERNAL, "Sentinel could not apply its policy to this request")

    def _on_request(self, exchange: Exchange) -> Refusal | None:
        policy = self.source.current
        if policy is None:
            return None
        operation = exchange.operation
        if operation is Operation.OTHER and exchange.path.rstrip("/") == NATIVE_COMPLETION:
            operation = Operation.TEXT_COMPLETION  # llama.cpp's own completion API: `prompt` in, `content` out
        elif operation is Operation.OTHER and _responses_api(exchange):
            operation = Operation.CHAT  # judged as a chat: `input` and `instructions` in, `output` out
        plan = policy.plan(exchange.path, operation)
        if plan.unknown and exchange.request_body and not plan.pass_through:
            return self._unjudged(
                exchange,
                policy,
                "unknown_route",
                f"Sentinel policy cannot read requests to {exchange.path}, so it does not forward them; "
                "an operator may list the route under pass_through in the policy file",
            )
        if not exchange.request_body:
            # No request to judge, but the answer may carry text (a stored Responses answer fetched
            # by id, an unknown route's GET): response rules still apply to it.
            if plan.pass_through or not (plan.admitted or plan.fixed or plan.conditional):
                return None
            chosen = plan.admitted or tuple(sorted(plan.fixed + plan.conditional))
            self._expect_answer(exchange, policy, policy.active(chosen, generates=True))
            return None
        if plan.empty:
            return None
        try:
            parsed = parse(exchange.request_body)
        except Unparseable as exc:
            if plan.pass_through:
                return None
            return self._unjudged(exchange, policy, "unparseable", f"Sentinel policy cannot judge this request: {exc}")
        body = parsed.body
        if not isinstance(body, dict):
            if plan.pass_through:
                return None
            return self._unjudged(
                exchange,
                policy,
                "unparseable",
                "Sentinel policy cannot judge this request: the body is not a JSON object",
            )
        twice = duplicate_key(exchange.request_body)
        try:
            if twice is not None:
                raise Ambiguous(f"the key {twice!r} is given twice with different values")
            renamed = canonicalise(body)
        except Ambiguous as exc:
            if plan.pass_through:
                return None
            message = f"Sentinel policy cannot judge this request: {exc}"
            return self._unjudged(exchange, policy, "ambiguous_keys", message)
        model, user = body.get("model"), body.get("user")
        active = policy.select(
            plan,
            model if isinstance(model, str) else None,
            user if isinstance(user, str) else None,
            lambda: api_key_id(exchange.authorization),
        )
        if active.empty:
            return None
        changed = renamed
        if active.sampling:
            outcome = apply_bounds(body, exchange.protocol, active.sampling)
            if outcome.notes:
                _notes(exchange, policy)["sampling"] = outcome.notes
                self._count_sampling(outcome.notes)
            if outcome.refusal is not None:
                _notes(exchange, policy)["blocked"] = {"stage": "request", "reason": "sampling"}
                return Refusal(BLOCK_STATUS, ErrorType.POLICY_BLOCKED, outcome.refusal)
            changed = outcome.changed
        if active.request:
            ids = token_ids(body, exchange.protocol, operation)
            if ids is not None and not plan.pass_through:
                return self._unjudged(
                    exchange,
                    policy,
                    "token_ids",
                    f"Sentinel policy cannot judge token ids in {ids!r}: send the text itself "
                    "(an operator may list the route under pass_through in the policy file)",
                )
            scanned = self._scan_request(exchange, policy, body, active.request, operation)
            if isinstance(scanned, Refusal):
                return scanned
            changed |= scanned
        if changed:
            exchange.request_body = parsed.dump()
        self._expect_answer(exchange, policy, active)
        return None

    def _expect_answer(self, exchange: Exchange, policy: Policy, active: Active) -> None:
        if active.rewrite or active.observe:
            if len(self._pending) > _PENDING_LIMIT:
                self._pending.clear()  # only if response_filter stopped being called: never grow unbounded
            self._pending[exchange.id] = (policy, active)

    def _unjudged(self, exchange: Exchange, policy: Policy, reason: str, message: str) -> Refusal:
        """Fail closed: refuse what the policy cannot read, and say why in the record and the metrics."""
        _notes(exchange, policy)["blocked"] = {"stage": "request", "reason": reason}
        if self.metrics is not None:
            self.metrics.action(reason, "block", "request")
        return Refusal(BLOCK_STATUS, ErrorType.POLICY_BLOCKED, message)

    def _count_sampling(self, notes: dict[str, dict[str, Any]]) -> None:
        if self.metrics is None:
            return
        for entry in notes.values():
            if entry["action"] != "within":
                self.metrics.action(entry["rule"], entry["action"], "request")

    def _scan_request(
        self, ex: Exchange, policy: Policy, body: dict[str, Any], scanner: Scanner, operation: Operation
    ) -> bool | Refusal:
        try:
            found = request_texts(body)
        except TooDeep as exc:
            return self._unjudged(ex, policy, "unparseable", f"Sentinel policy cannot judge this request: {exc}")
        units = found.all()
        if not units:
            return False
        texts = [
            unit_slots[0][0][unit_slots[0][1]]
            if len(unit_slots) == 1
            else "\n".join(container[key] for container, key in unit_slots)
            for unit_slots in units
        ]
        # One pass over all the text; only if something may match is each piece located and rewritten.
        # (Content parts also read joined with nothing between, as a chat template looping over them may.)
        bare = ["".join(container[key] for container, key in unit_slots) for unit_slots in units if len(unit_slots) > 1]
        which = scanner.triggered(texts[0] if len(texts) == 1 else "\n".join(texts + bare))
        if not which:
            return False
        findings = Findings()
        changed = False
        for unit_slots, text in zip(units, texts, strict=True):
            hits = scanner.scan(text, which)
            pieces = [container[key] for container, key in unit_slots]
            new_pieces = redact_parts(pieces, hits, findings) if hits else pieces
            if len(pieces) > 1:
                # Chat templates that loop over the parts may also join them with nothing between.
                joined = scanner.scan("".join(new_pieces))
                crossing = spanning(joined, new_pieces, 0)
                if crossing:
                    new_pieces = redact_parts(new_pieces, crossing, findings, 0)
            for (container, key), old, new in zip(unit_slots, pieces, new_pieces, strict=True):
                if new != old:
                    container[key] = new
                    changed = True
        if changed:
            for encoded in found.encoded:
                encoded.store()
        if not findings:
            return False
        notes = _notes(ex, policy)
        record(notes, findings, "request")
        if self.metrics is not None:
            self.metrics.findings(findings, "request")
        if findings.block is not None:
            notes["blocked"] = {"stage": "request", "rule": findings.block.rule}
            return Refusal(BLOCK_STATUS, ErrorType.POLICY_BLOCKED, block_message(findings.block, "request"))
        return changed

    def response_filter(self, exchange: Exchange) -> ResponseFilter | None:
        pending = self._pending.pop(exchange.id, None)
        if pending is None:
            return None
        policy, active = pending
        return PolicyFilter(exchange, policy, active, self.metrics)


class PolicyFilter:
    """The response side of one call. The format is decided at the first bytes (the headers are known
    by then): SSE and NDJSON streams are rewritten frame by frame, JSON bodies whole at the end; error
    answers and compressed bodies pass untouched (the latter noted in the record)."""

    def __init__(self, ex: Exchange, policy: Policy, active: Active, metrics: PolicyMetrics | None) -> None:
        self.ex = ex
        self.policy = policy
        self.active = active
        self.metrics = metrics
        self.findings = Findings()
        self.mode: str | None = None
        self.rewriter: SseRewriter | NdjsonRewriter | None = None
        self.body: list[bytes] = []
        self.observed = False

    def _start(self) -> str:
        ex = self.ex
        content_type = ex.response_content_type.lower()
        encoding = ex.response_content_encoding.lower()
        if (ex.upstream_status or 0) >= 400:
            return "pass"
        if encoding not in ("", "identity"):
            # Sentinel asked for `identity`; a server that compresses anyway is not read.
            _notes(ex, self.policy)["response_unchecked"] = f"content-encoding {encoding}"
            log.warning("response of %s not checked by policy: content-encoding %s", ex.id, encoding)
            return "refuse" if self.active.rewrite else "pass"
        if not self.active.rewrite:
            return "observe"
        if content_type.startswith("text/event-stream"):
            self.rewriter = SseRewriter(self.active.rewrite, self.findings)
            return "stream"
        if content_type.startswith("application/x-ndjson") or (
            ex.protocol is Protocol.OLLAMA and not content_type.startswith("application/json")
        ):
            self.rewriter = NdjsonRewriter(self.active.rewrite, self.findings)
            return "stream"
        return "json"

    def feed(self, chunk: bytes) -> bytes:
        mode = self.mode or self._set_mode()
        if mode == "refuse":
            raise self._refuse_encoded()
        if mode == "stream":
            assert self.rewriter is not None
            try:
                out = self.rewriter.feed(chunk)
            except Blocked as blocked:
                raise self._stop(blocked) from None
            if self.rewriter.ended and not self.observed:
                self._end()
            return out
        if mode == "json" or (mode == "observe" and self.ex.operation is Operation.OTHER):
            self.body.append(chunk)  # the proxy keeps no copy of routes it does not classify (/completion)
        if mode == "observe" and not self.observed and _final(chunk):
            self._end()
        return b"" if mode == "json" else chunk

    def _end(self) -> None:
        # The answer's last frame went through: record now, since clients (openai's) hang up right
        # after [DONE], which may be before the upstream's end of body reaches `finish`.
        self._observe()
        self._conclude()

    def finish(self) -> bytes:
        mode = self.mode or self._set_mode()
        if mode == "refuse":
            return b""  # an empty body: nothing was passed on
        out = b""
        try:
            if mode == "stream":
                assert self.rewriter is not None
                out = self.rewriter.finish()
            elif mode == "json":
                out = rewrite_json(
                    b"".join(self.body), self.active.rewrite, self.findings, self.ex.protocol is Protocol.OLLAMA
                )
        except Blocked as blocked:
            raise self._stop(blocked) from None
        if mode not in ("pass", "refuse"):
            if not self.observed:
                self._observe()
            self._conclude()
        return out

    def _refuse_encoded(self) -> StopResponse:
        """Redact or block rules apply but the answer is compressed: it is not passed on unread."""
        ex = self.ex
        _notes(ex, self.policy)["blocked"] = {"stage": "response", "reason": "encoded_response"}
        if self.metrics is not None:
            self.metrics.action("encoded_response", "block", "response")
        message = (
            f"Sentinel policy cannot check an answer compressed with {ex.response_content_encoding}; "
            "the model server ignored Accept-Encoding: identity"
        )
        refusal = Refusal(502, ErrorType.POLICY_BLOCKED, message)
        return StopResponse(refusal, error_body(ex.protocol, 502, ErrorType.POLICY_BLOCKED, message))

    def _set_mode(self) -> str:
        self.mode = self._start()
        return self.mode

    def _stop(self, blocked: Blocked) -> StopResponse:
        """End the answer: an error the caller's client raises, after what was already cleared to send."""
        self.findings.count_block(blocked.detector)
        if not self.observed:
            self._observe()
        self._conclude()
        _notes(self.ex, self.policy)["blocked"] = {"stage": "response", "rule": blocked.detector.rule}
        message = block_message(blocked.detector, "response")
        refusal = Refusal(BLOCK_STATUS, ErrorType.POLICY_BLOCKED, message)
        protocol = self.ex.protocol
        error = error_body(protocol, BLOCK_STATUS, ErrorType.POLICY_BLOCKED, message)
        if self.mode == "json":
            tail = error
        elif isinstance(self.rewriter, SseRewriter) and self.rewriter.responses:
            tail = blocked.emitted + b"event: error\ndata: " + orjson.dumps(responses.error_event(message)) + b"\n\n"
        elif isinstance(self.rewriter, NdjsonRewriter):
            tail = blocked.emitted + error + b"\n"
        else:
            tail = blocked.emitted + b"data: " + error + b"\n\ndata: [DONE]\n\n"
        return StopResponse(refusal, tail)

    def _observe(self) -> None:
        """Flag-only rules: scan the answer as the upstream sent it (the proxy's own copy)."""
        scanner = self.active.observe
        self.observed = True
        chunks = self.ex.chunks or self.body
        if not scanner or not chunks:
            return
        for text in _answer_texts(self.ex, chunks):
            hits = scanner.scan(text)
            for hit in hits:
                self.findings.count(hit)

    def _conclude(self) -> None:
        if self.findings.logprobs_stripped:
            _notes(self.ex, self.policy)["logprobs_stripped"] = True
        if not self.findings:
            return
        record(_notes(self.ex, self.policy), self.findings, "response")
        if self.metrics is not None:
            self.metrics.findings(self.findings, "response")
        self.findings = Findings()


def _final(chunk: bytes) -> bool:
    """Whether a chunk carries the last frame: SSE `data: [DONE]`, Ollama's `done: true` line or
    llama.cpp's native `stop: true` frame."""
    return chunk.rstrip().endswith(b"[DONE]") or any(
        mark in chunk for mark in (b'"done":true', b'"done": true', b'"stop":true', b'"stop": true')
    )


def _answer_texts(ex: Exchange, chunks: list[bytes]) -> list[str]:
    """The generated text of a finished exchange (answer and reasoning, every choice), parsed from
    the bytes the upstream sent."""
    content_type = ex.response_content_type
    facts: ResponseFacts
    if content_type.startswith("text/event-stream"):
        facts = openai_capture.parse_sse(chunks)
    elif ex.protocol is Protocol.OLLAMA:
        if content_type.startswith("application/json"):
            facts = ollama_capture.parse_body(b"".join(chunks), ex.operation)
        else:
            facts = ollama_capture.parse_ndjson(chunks, ex.operation)
    else:
        facts = openai_capture.parse_body(b"".join(chunks), ex.operation)
    texts = ["".join(parts) for parts in facts.texts.values()]
    texts += ["".join(parts) for parts in facts.reasoning.values()]
    if ex.protocol is Protocol.OLLAMA and content_type.startswith("application/json"):
        # llama.cpp answers Ollama's /api/chat with its OpenAI handler: read the body that way too.
        other = openai_capture.parse_body(b"".join(chunks), Operation.CHAT)
        texts += ["".join(parts) for parts in (*other.texts.values(), *other.reasoning.values())]
    texts += _native_texts(ex, chunks) if ex.path.rstrip("/") in (NATIVE_COMPLETION, "/completions") else []
    if _responses_api(ex):
        texts += _responses_texts(chunks, content_type.startswith("text/event-stream"))
    return [text for text in texts if text]


def _responses_api(ex: Exchange) -> bool:
    """`/v1/responses`, and a stored answer fetched or cancelled by id (`/v1/responses/{id}`,
    `/v1/responses/{id}/cancel`, `/v1/responses/{id}/input_items`)."""
    return ex.protocol is Protocol.OPENAI and responses.PATH.search(ex.path) is not None


def _responses_texts(chunks: list[bytes], streamed: bool) -> list[str]:
    """A Responses API answer's text: the deltas of a stream, every text of a whole answer."""
    body = b"".join(chunks)
    payloads = [line[5:].strip() for line in body.splitlines() if line.startswith(b"data:")] if streamed else [body]
    parts: list[str] = []
    for payload in payloads:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not streamed:
            parts += [container[key] for container, key in responses.answer_slots(obj)]
        elif responses.is_event(obj) and obj["type"].endswith(".delta") and isinstance(obj.get("delta"), str):
            parts.append(obj["delta"])
    return ["".join(parts)]


def _native_texts(ex: Exchange, chunks: list[bytes]) -> list[str]:
    """llama.cpp's native answer: `content` of a JSON body or of every SSE frame."""
    body = b"".join(chunks)
    payloads = [body]
    if ex.response_content_type.startswith("text/event-stream"):
        payloads = [line[5:].strip() for line in body.splitlines() if line.startswith(b"data:")]
    parts = []
    for payload in payloads:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "choices" not in obj and isinstance(obj.get("content"), str):
            parts.append(obj["content"])
    return ["".join(parts)]
