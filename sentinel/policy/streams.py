"""Rewriting answers as they stream: redaction inside the generated TEXT of SSE and NDJSON frames.

Each run of generated text (a choice's answer, its reasoning) is a `TextStream`: deltas are pushed
in, and what comes out is the text that can no longer become part of a match, redacted; only a tail
that could still grow into a match is held back (for keyword rules, the longest tail that is a
keyword's beginning; for patterns, their longest possible match). Frames are re-emitted whole and
well formed with the text they may carry now; frames whose text did not change go out as they came.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from sentinel.policy import responses
from sentinel.policy.matching import Detector, Findings, Hit, Scanner, Views, redact
from sentinel.policy.payload import Texts, TooDeep, argument_texts, unescape

_CONTEXT = 8
"""Characters of already emitted text kept so `\\b` at the start of the held text is judged right."""

OPENAI_DELTA_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")
OLLAMA_MESSAGE_FIELDS = ("content", "thinking")
OLLAMA_GENERATE_FIELDS = ("response", "thinking")


NATIVE_PROBABILITIES = ("completion_probabilities", "probs")


def strip_native_probabilities(target: dict[str, Any], findings: Findings) -> bool:
    """llama.cpp's native token probabilities (`n_probs`): removed for the same reason as logprobs."""
    found = [key for key in NATIVE_PROBABILITIES if key in target]
    for key in found:
        del target[key]
    if found:
        findings.logprobs_stripped = True
    return bool(found)


def strip_logprobs(target: dict[str, Any], findings: Findings, remove: bool = False) -> bool:
    """Drop the log-probabilities of an answer a rule may rewrite: their token text repeats the answer
    (the digits behind `[SSN]`, the text held back from a block) and cannot be redacted in step with
    it token by token. OpenAI shapes keep `logprobs: null`, which their clients read as "none";
    Ollama's key is removed, as Ollama omits it when none were asked for."""
    if target.get("logprobs") is None:
        return False
    if remove:
        del target["logprobs"]
    else:
        target["logprobs"] = None
    findings.logprobs_stripped = True
    return True


class Blocked(Exception):
    """A block rule matched the answer; `emitted` is what the current feed had produced before it."""

    def __init__(self, detector: Detector) -> None:
        super().__init__(detector.rule)
        self.detector = detector
        self.emitted = b""


class TextStream:
    __slots__ = ("carry", "context", "findings", "held", "scanner")

    def __init__(self, scanner: Scanner, findings: Findings) -> None:
        self.scanner = scanner
        self.findings = findings
        self.held = ""
        self.context = ""
        self.carry = ""
        """Tool-call arguments: an escape cut off at the end of the last piece (see `push_json`)."""

    def push_json(self, text: str) -> str:
        """A piece of JSON text (streamed tool-call arguments): `\\u` escapes are written as their
        characters first (`payload.unescape`), so `n\\u0065rve agent` is held and judged as the
        keyword it decodes to; the JSON sent on means the same."""
        decoded, self.carry = unescape(self.carry + text)
        return self.push(decoded)

    def flush_json(self) -> str:
        carry, self.carry = self.carry, ""
        return self._emit(self.held + carry, len(self.held + carry), Views(self.context + self.held + carry))

    def push(self, text: str) -> str:
        """Take the next delta; return the text that is safe to send now (raises `Blocked`)."""
        buffer = self.held + text
        full = Views(self.context + buffer)  # one set of views for the hold and the scan
        return self._emit(buffer, len(buffer) - min(self.scanner.hold(full), len(buffer)), full)

    def flush(self) -> str:
        """The end of this text: everything held is decided and returned."""
        return self._emit(self.held, len(self.held), Views(self.context + self.held)) if self.held else ""

    def _emit(self, buffer: str, cut: int, full: Views) -> str:
        offset = len(self.context)
        which = self.scanner.triggered(full)
        final: list[Hit] = []
        end = cut
        if which:
            for hit in self.scanner.scan(full, which, offset):
                if hit.detector.action == "block":
                    raise Blocked(hit.detector)
                # A match that starts before the cut is complete: no longer match can start there
                # (hold-back covers the longest match). Take it whole even if it runs past the cut.
                if hit.match_start - offset < end:
                    final.append(Hit(hit.detector, hit.start - offset, hit.end - offset, hit.match_start - offset))
                    end = max(end, hit.end - offset)
        out = redact(buffer[:end], final, self.findings) if final else buffer[:end]
        self.context = (self.context + buffer[:end])[-_CONTEXT:]
        self.held = buffer[end:]
        return out


class _Streams:
    """The text streams of one response, keyed by (choice index, field)."""

    def __init__(self, scanner: Scanner, findings: Findings) -> None:
        self.scanner = scanner
        self.findings = findings
        self.streams: dict[tuple[int, str], TextStream] = {}

    def rewrite(
        self, target: dict[str, Any], index: int, fields: tuple[str, ...], finishing: bool, prelude: dict[str, str]
    ) -> bool:
        """Push `target[field]` through its stream (flushing it when the choice finishes); True if changed.

        When text arrives in one field, what another field of the same choice still holds (the end of
        the reasoning when the answer starts) goes into `prelude`, to be sent in a frame of its own
        first: clients such as Dify read a delta as reasoning or answer, not both.
        """
        changed = False
        for name in fields:
            value = target.get(name)
            stream = self.streams.get((index, name))
            if isinstance(value, str) and value:
                if stream is None:
                    stream = self.streams[(index, name)] = TextStream(self.scanner, self.findings)
                for other in fields:
                    held = self.streams.get((index, other))
                    if other != name and held is not None and held.held:
                        text = held.flush()
                        if text:
                            prelude[other] = prelude.get(other, "") + text
                out = stream.push(value)
            elif stream is None or not (finishing and stream.held):
                continue
            else:
                out = ""
            if finishing:
                out += stream.flush()
            if out != value and (out or value):
                target[name] = out
                changed = True
        return changed

    def leftovers(self) -> dict[int, dict[str, str]]:
        """Flush every stream; the held text by choice and field (for a final synthesized frame)."""
        left: dict[int, dict[str, str]] = {}
        for (index, name), stream in self.streams.items():
            text = stream.flush()
            if text:
                left.setdefault(index, {})[name] = text
        return left


def _split(data: bytes, delimiters: tuple[bytes, ...]) -> tuple[list[bytes], bytes]:
    """Complete records (each with its delimiter) and the incomplete rest."""
    records: list[bytes] = []
    pos = 0
    while True:
        found = [(at, d) for d in delimiters if (at := data.find(d, pos)) >= 0]
        if not found:
            return records, data[pos:]
        at, delimiter = min(found)
        records.append(data[pos : at + len(delimiter)])
        pos = at + len(delimiter)


class SseRewriter:
    """OpenAI-style Server-Sent Events: text in `choices[].delta.content|reasoning_content|reasoning`
    (chat) or `choices[].text` (completions)."""

    def __init__(self, scanner: Scanner, findings: Findings) -> None:
        self.streams = _Streams(scanner, findings)
        self.calls: dict[tuple[int, int], TextStream] = {}
        """Streamed tool-call arguments, by (choice index, tool-call index)."""
        self.native = False
        """The frames are llama.cpp's native ones (`content`, `stop`), not OpenAI chunks."""
        self.responses = False
        """The events are the Responses API's (`response.*`)."""
        self.events: dict[tuple[Any, ...], TextStream] = {}
        """Responses API text streams, by (kind, item, output, part)."""
        self.responses_seen_delta = False
        self.pending = b""
        self.template: dict[str, Any] | None = None
        self.ended = False
        """`data: [DONE]` went through."""

    def feed(self, chunk: bytes) -> bytes:
        delimiters = (b"\n\n", b"\r\n\r\n") if b"\r" in chunk or b"\r" in self.pending else (b"\n\n",)
        events, self.pending = _split(self.pending + chunk, delimiters)
        out: list[bytes] = []
        try:
            for event in events:
                out.append(self._event(event))
        except Blocked as blocked:
            blocked.emitted = b"".join(out)
            raise
        return b"".join(out)

    def finish(self) -> bytes:
        rest, self.pending = self.pending, b""
        return self._leftovers() + (self._event(rest) if rest else b"")

    def _event(self, event: bytes) -> bytes:
        """One event: its `data:` lines are the payload (joined by newlines, as SSE says); `event:`,
        `id:`, `retry:` and comment lines are kept as they are around a rewritten payload."""
        body = event.rstrip(b"\r\n")
        if body.startswith(b"data:") and b"\n" not in body:
            payload = body[5:].strip()
            rewritten = self._payload(payload)
            if rewritten is None:
                return event
            head, new = rewritten
            return head + b"data: " + new + event[len(body) :]
        lines = body.split(b"\n")
        data = [line.rstrip(b"\r")[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return event  # comments (keep-alives) and events without data: not generated text
        rewritten = self._payload(b"\n".join(data).strip())
        if rewritten is None:
            return event
        head, new = rewritten
        kept: list[bytes] = []
        placed = False
        for line in lines:
            if not line.startswith(b"data:"):
                kept.append(line.rstrip(b"\r"))
            elif not placed:
                kept.append(b"data: " + new)
                placed = True
        return head + b"\n".join(kept) + b"\n\n"

    def _payload(self, payload: bytes) -> tuple[bytes, bytes] | None:
        """The rewritten payload and any frame to send before it, or None if it stays as it is."""
        if payload == b"[DONE]":
            self.ended = True
            left = self._leftovers()
            return (left, payload) if left else None
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if isinstance(obj, dict) and "choices" not in obj and isinstance(obj.get("content"), str):
            return self._native(obj)
        if responses.is_event(obj):
            return self._response_event(obj)
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list) or not choices:
            return None
        self.template = obj
        changed = False
        preludes: dict[int, dict[str, str]] = {}
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", position)
            index = index if isinstance(index, int) else position
            finishing = choice.get("finish_reason") is not None
            delta = choice.get("delta")
            prelude = preludes.setdefault(index, {})
            if isinstance(delta, dict):
                changed |= self.streams.rewrite(delta, index, OPENAI_DELTA_FIELDS, finishing, prelude)
                if "tool_calls" in delta or (finishing and self.calls):
                    changed |= self._tool_calls(delta, index, finishing)
            elif "text" in choice:
                changed |= self.streams.rewrite(choice, index, ("text",), finishing, prelude)
            if choice.get("logprobs") is not None:
                changed |= strip_logprobs(choice, self.streams.findings)
        if not changed:
            return None
        return self._frame({i: p for i, p in preludes.items() if p}), orjson.dumps(obj)

    def _response_event(self, obj: dict[str, Any]) -> tuple[bytes, bytes] | None:
        """One Responses API event: deltas are held and redacted as a stream per item and part; the
        events that repeat a whole text are redacted whole (counted once, from the deltas)."""
        self.responses = True
        kind: str = obj["type"]
        findings = self.streams.findings
        changed = False
        if responses.strip_logprobs(obj):
            findings.logprobs_stripped = changed = True
        head = b""
        if kind.endswith(".delta") and isinstance(obj.get("delta"), str):
            self.responses_seen_delta = True
            key = responses.stream_key(obj)
            stream = self.events.get(key)
            if stream is None:
                stream = self.events[key] = TextStream(self.streams.scanner, findings)
            # Function-call arguments are JSON: their escapes are read as characters (`push_json`).
            arguments = kind == responses.ARGUMENTS_DELTA
            out = stream.push_json(obj["delta"]) if arguments else stream.push(obj["delta"])
            if out != obj["delta"]:
                obj["delta"] = out
                changed = True
            return (b"", orjson.dumps(obj)) if changed else None
        if kind.endswith(".done"):
            stream = self.events.pop(responses.stream_key(obj), None)
            if stream is not None:
                head = self._delta_event(responses.stream_key(obj), stream.flush_json())
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.ended = True
            head += b"".join(self._delta_event(key, stream.flush_json()) for key, stream in self.events.items())
            self.events.clear()
        # The deltas were counted; the repeats of their text are not counted again.
        counted = Findings() if self.responses_seen_delta else findings
        whole, block = responses.redact_whole(obj, self.streams.scanner, counted)
        if block is not None:
            raise Blocked(block)
        if not (changed or whole or head):
            return None
        return head, orjson.dumps(obj)

    def _delta_event(self, key: tuple[Any, ...], text: str) -> bytes:
        if not text:
            return b""
        event = responses.delta_event(key, text)
        name: str = event["type"]
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def _native(self, obj: dict[str, Any]) -> tuple[bytes, bytes] | None:
        """llama.cpp's native `/completion` (and its `/completions` alias): `{"content": ..., "stop": ...}`
        frames, no [DONE]; the frame with `stop: true` ends the answer."""
        self.native = True
        finishing = obj.get("stop") is True
        self.ended |= finishing
        changed = self.streams.rewrite(obj, 0, ("content",), finishing, {})
        changed |= strip_native_probabilities(obj, self.streams.findings)
        return (b"", orjson.dumps(obj)) if changed else None

    def _tool_calls(self, delta: dict[str, Any], index: int, finishing: bool) -> bool:
        """Tool-call arguments stream in pieces like text: each call's are held and redacted alike; what
        is held when the choice finishes goes out in that frame as one more argument piece."""
        changed = False
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            function = call.get("function") if isinstance(call, dict) else None
            value = function.get("arguments") if isinstance(function, dict) else None
            if not isinstance(value, str) or not value:
                continue
            number = call.get("index", position)
            number = number if isinstance(number, int) else position
            stream = self.calls.get((index, number))
            if stream is None:
                stream = self.calls[(index, number)] = TextStream(self.streams.scanner, self.streams.findings)
            out = stream.push_json(value)
            if out != value:
                assert function is not None
                function["arguments"] = out
                changed = True
        if finishing:
            held = self._held_calls(index)
            if held:
                delta["tool_calls"] = [*(calls if isinstance(calls, list) else ()), *held]
                changed = True
        return changed

    def _held_calls(self, index: int) -> list[dict[str, Any]]:
        held = []
        for (choice, number), stream in self.calls.items():
            text = stream.flush_json() if choice == index else ""
            if text:
                held.append({"index": number, "function": {"arguments": text}})
        return held

    def _leftovers(self) -> bytes:
        """Held text whose choice never said finish_reason: one more chunk carrying it, before [DONE]."""
        if self.responses:
            out = b"".join(self._delta_event(key, stream.flush()) for key, stream in self.events.items())
            self.events.clear()
            return out
        out = self._frame(self.streams.leftovers())
        for index in sorted({choice for choice, _ in self.calls}):
            held = self._held_calls(index)
            if held:
                out += self._frame({index: {}}, {index: held})
        return out

    def _frame(self, left: dict[int, dict[str, str]], calls: dict[int, list[dict[str, Any]]] | None = None) -> bytes:
        """A chunk of our own carrying `left` text (or held tool-call arguments), shaped like the
        upstream's chunks."""
        if not left:
            return b""
        if self.native:
            text = "".join(text for fields in left.values() for text in fields.values())
            return b"data: " + orjson.dumps({"content": text, "stop": False}) + b"\n\n" if text else b""
        base = {k: v for k, v in (self.template or {}).items() if k in ("id", "object", "created", "model")}
        chat = base.get("object") != "text_completion"
        choices = [
            {
                "index": index,
                "delta": {**fields, "tool_calls": calls[index]} if calls else fields,
                "finish_reason": None,
            }
            if chat
            else {"index": index, "text": "".join(fields.values()), "finish_reason": None}
            for index, fields in sorted(left.items())
        ]
        return b"data: " + orjson.dumps({**base, "choices": choices}) + b"\n\n"


class NdjsonRewriter:
    """Ollama's native streams: one JSON object per line, text in `message.content|thinking` (chat) or
    `response|thinking` (generate); the last line says `done: true`."""

    def __init__(self, scanner: Scanner, findings: Findings) -> None:
        self.streams = _Streams(scanner, findings)
        self.pending = b""
        self.chat: bool | None = None
        self.template: dict[str, Any] = {}
        self.ended = False
        """The `done: true` line went through."""

    def feed(self, chunk: bytes) -> bytes:
        lines, self.pending = _split(self.pending + chunk, (b"\n",))
        out: list[bytes] = []
        try:
            for line in lines:
                out.append(self._line(line))
        except Blocked as blocked:
            blocked.emitted = b"".join(out)
            raise
        return b"".join(out)

    def finish(self) -> bytes:
        rest, self.pending = self.pending, b""
        out = self._line(rest) if rest.strip() else rest
        return out + self._line_of(self.streams.leftovers().get(0, {}))

    def _line(self, line: bytes) -> bytes:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            return line
        if not isinstance(obj, dict):
            return line
        finishing = obj.get("done") is True
        self.ended |= finishing
        self.template = {k: obj[k] for k in ("model", "created_at") if k in obj}
        message = obj.get("message")
        prelude: dict[str, str] = {}
        if isinstance(message, dict):
            self.chat = True
            changed = self.streams.rewrite(message, 0, OLLAMA_MESSAGE_FIELDS, finishing, prelude)
        else:
            self.chat = self.chat or False
            changed = self.streams.rewrite(obj, 0, OLLAMA_GENERATE_FIELDS, finishing, prelude)
        changed |= strip_logprobs(obj, self.streams.findings, remove=True)
        if isinstance(message, dict):
            changed |= _whole_arguments(message, self.streams.scanner, self.streams.findings)
        if not changed:
            return line
        return self._line_of(prelude) + orjson.dumps(obj) + line[len(line.rstrip(b"\r\n")) :]

    def _line_of(self, fields: dict[str, str]) -> bytes:
        if not fields:
            return b""
        obj: dict[str, Any] = dict(self.template)
        obj.update({"message": {"role": "assistant", **fields}} if self.chat else fields)
        obj["done"] = False
        return orjson.dumps(obj) + b"\n"


def rewrite_json(body: bytes, scanner: Scanner, findings: Findings, ollama: bool) -> bytes:
    """A whole (non-streamed) answer: every text field scanned and redacted at once (raises `Blocked`)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(obj, dict):
        return body
    changed = False

    def visit(target: Any, fields: tuple[str, ...]) -> None:
        nonlocal changed
        if not isinstance(target, dict):
            return
        for name in fields:
            value = target.get(name)
            if isinstance(value, str) and value:
                hits = scanner.scan(value)
                for hit in hits:
                    if hit.detector.action == "block":
                        raise Blocked(hit.detector)
                if hits:
                    new = redact(value, hits, findings)
                    if new != value:
                        target[name] = new
                        changed = True

    # Decided by the shape, not the route: llama.cpp serves OpenAI answers on Ollama's /api/chat.
    if ollama or isinstance(obj.get("message"), dict) or isinstance(obj.get("response"), str):
        visit(obj.get("message"), OLLAMA_MESSAGE_FIELDS)
        visit(obj, OLLAMA_GENERATE_FIELDS)
        changed |= strip_logprobs(obj, findings, remove=True)
        if isinstance(obj.get("message"), dict):
            changed |= _whole_arguments(obj["message"], scanner, findings)
    if obj.get("object") == "response":  # the Responses API
        if responses.strip_logprobs(obj):
            findings.logprobs_stripped = changed = True
        whole, block = responses.redact_whole(obj, scanner, findings)
        if block is not None:
            raise Blocked(block)
        changed |= whole
    elif "choices" not in obj and isinstance(obj.get("content"), str):  # llama.cpp native /completion
        visit(obj, ("content",))
        changed |= strip_native_probabilities(obj, findings)
    else:
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict):
                visit(choice.get("message"), OPENAI_DELTA_FIELDS)
                visit(choice, ("text",))
                changed |= strip_logprobs(choice, findings)
                if isinstance(choice.get("message"), dict):
                    changed |= _whole_arguments(choice["message"], scanner, findings)
    return orjson.dumps(obj) if changed else body


def _whole_arguments(message: dict[str, Any], scanner: Scanner, findings: Findings) -> bool:
    """Tool calls that arrive whole (a non-streamed answer, Ollama's lines): every string and key in
    their arguments (a JSON string decoded when it parses, so escapes hide nothing), scanned and
    redacted at once (raises `Blocked`)."""
    changed = False
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        raw = function.get("arguments")
        if isinstance(raw, str) and raw:
            # The string as sent first (a redaction there keeps its formatting), then decoded below.
            changed |= _redact_slot(function, "arguments", scanner, findings)
        try:
            found = argument_texts(function)
        except TooDeep:
            found = Texts(units=[[(function, "arguments")]]) if isinstance(function["arguments"], str) else Texts()
        mine = False
        for ((container, key),) in found.all():
            mine |= _redact_slot(container, key, scanner, findings)
        if mine:
            for encoded in found.encoded:
                encoded.store()
            changed = True
    return changed


def _redact_slot(container: Any, key: Any, scanner: Scanner, findings: Findings) -> bool:
    value: str = container[key]
    hits = scanner.scan(value)
    for hit in hits:
        if hit.detector.action == "block":
            raise Blocked(hit.detector)
    if not hits:
        return False
    new = redact(value, hits, findings)
    container[key] = new
    return new != value


Rewriter = SseRewriter | NdjsonRewriter
RewriterFactory = Callable[[Scanner, Findings], Rewriter]
