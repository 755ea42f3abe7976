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

from sentinel.policy.matching import Detector, Findings, Hit, Scanner, Views, redact

_CONTEXT = 8
"""Characters of already emitted text kept so `\\b` at the start of the held text is judged right."""

OPENAI_DELTA_FIELDS = ("content", "reasoning_content", "reasoning")
OLLAMA_MESSAGE_FIELDS = ("content", "thinking")
OLLAMA_GENERATE_FIELDS = ("response", "thinking")


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
    __slots__ = ("context", "findings", "held", "scanner")

    def __init__(self, scanner: Scanner, findings: Findings) -> None:
        self.scanner = scanner
        self.findings = findings
        self.held = ""
        self.context = ""

    def push(self, text: str) -> str:
        """Take the next delta; return the text that is safe to send now (raises `Blocked`)."""
        buffer = self.held + text
        return self._emit(buffer, len(buffer) - self.scanner.hold(buffer))

    def flush(self) -> str:
        """The end of this text: everything held is decided and returned."""
        return self._emit(self.held, len(self.held)) if self.held else ""

    def _emit(self, buffer: str, cut: int) -> str:
        offset = len(self.context)
        full = Views(self.context + buffer)
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
        if not event.startswith(b"data:"):
            return event  # comments (keep-alives), named events: not generated text
        body = event.rstrip(b"\r\n")
        if b"\n" in body:
            return event
        payload = body[5:].strip()
        if payload == b"[DONE]":
            self.ended = True
            return self._leftovers() + event
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list) or not choices:
            return event
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
            elif "text" in choice:
                changed |= self.streams.rewrite(choice, index, ("text",), finishing, prelude)
            changed |= strip_logprobs(choice, self.streams.findings)
        if not changed:
            return event
        head = self._frame({i: p for i, p in preludes.items() if p})
        return head + b"data: " + orjson.dumps(obj) + event[len(body) :]

    def _leftovers(self) -> bytes:
        """Held text whose choice never said finish_reason: one more chunk carrying it, before [DONE]."""
        return self._frame(self.streams.leftovers())

    def _frame(self, left: dict[int, dict[str, str]]) -> bytes:
        """A chunk of our own carrying `left` text, shaped like the upstream's chunks."""
        if not left:
            return b""
        base = {k: v for k, v in (self.template or {}).items() if k in ("id", "object", "created", "model")}
        chat = base.get("object") != "text_completion"
        choices = [
            {"index": index, "delta": fields, "finish_reason": None}
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

    if ollama:
        visit(obj.get("message"), OLLAMA_MESSAGE_FIELDS)
        visit(obj, OLLAMA_GENERATE_FIELDS)
        changed |= strip_logprobs(obj, findings, remove=True)
    else:
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict):
                visit(choice.get("message"), OPENAI_DELTA_FIELDS)
                visit(choice, ("text",))
                changed |= strip_logprobs(choice, findings)
    return orjson.dumps(obj) if changed else body


Rewriter = SseRewriter | NdjsonRewriter
RewriterFactory = Callable[[Scanner, Findings], Rewriter]
