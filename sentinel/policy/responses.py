"""OpenAI's Responses API (`/v1/responses`), as vLLM and others serve it: where its requests and answers
carry text.

A request has `instructions` and `input` (a string, or items: messages whose `content` is a string or
parts with `text`, `function_call` items with `arguments`, `function_call_output` items with
`output`, reasoning items with `summary[].text`). An answer's `output` holds the same kinds of item.
A stream is typed events: `*.delta` events carry pieces of one text (keyed by item and part), the
matching `*.done` event and the `content_part`, `output_item` and `response.completed` events repeat
the whole text. Pieces are held and redacted like any streamed text; the repeats are redacted
whole, which gives the same text (docs/policy.md).
"""

from __future__ import annotations

import re
from typing import Any

from sentinel.policy.matching import Detector, Findings, Scanner, redact
from sentinel.policy.payload import Slot, unescape

ARGUMENTS_DELTA = "response.function_call_arguments.delta"
PATH = re.compile(r"/responses(/[^/]+(/(cancel|input_items))?)?/?$")
TEXT_KEYS = frozenset(("text", "refusal", "arguments", "output", "delta", "output_text"))
"""Keys whose string values are text, wherever they sit in an answer or an event."""
_DEPTH = 16
_INDEXES = ("item_id", "output_index", "content_index", "summary_index")


def answer_slots(obj: Any) -> list[Slot]:
    slots: list[Slot] = []
    _walk(obj, slots, 0, TEXT_KEYS)
    return slots


def _walk(container: Any, slots: list[Slot], depth: int, keys: frozenset[str]) -> None:
    if depth > _DEPTH:
        return
    if isinstance(container, dict):
        for key, value in container.items():
            if isinstance(value, str):
                if key in keys:
                    slots.append((container, key))
            else:
                _walk(value, slots, depth + 1, keys)
    elif isinstance(container, list):
        for value in container:
            _walk(value, slots, depth + 1, keys)


def redact_whole(obj: Any, scanner: Scanner, findings: Findings) -> tuple[bool, Detector | None]:
    """Every text of an answer or event, scanned and redacted at once: (changed, a block detector)."""
    changed = False
    for container, key in answer_slots(obj):
        value = container[key]
        if key == "arguments" and "\\" in value:
            value, _ = unescape(value)  # JSON: an escape must not hide a letter (the same JSON)
            if value != container[key]:
                container[key] = value
                changed = True
        hits = scanner.scan(value)
        for hit in hits:
            if hit.detector.action == "block":
                return changed, hit.detector
        if hits:
            new = redact(value, hits, findings)
            if new != value:
                container[key] = new
                changed = True
    return changed, None


def strip_logprobs(obj: Any, depth: int = 0) -> bool:
    """Remove every `logprobs` (events and output parts carry them)."""
    found = False
    if depth > _DEPTH:
        return False
    if isinstance(obj, dict):
        if obj.pop("logprobs", None) is not None:
            found = True
        for value in obj.values():
            found |= strip_logprobs(value, depth + 1)
    elif isinstance(obj, list):
        for value in obj:
            found |= strip_logprobs(value, depth + 1)
    return found


def is_event(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("type"), str) and obj["type"].startswith("response.")


def stream_key(obj: dict[str, Any]) -> tuple[Any, ...]:
    """Which run of text a `*.delta` / `*.done` event belongs to: its kind, item and part."""
    return (obj["type"].rsplit(".", 1)[0], *(obj.get(name) for name in _INDEXES))


def delta_event(key: tuple[Any, ...], text: str) -> dict[str, Any]:
    """A `*.delta` event of our own carrying held text."""
    event: dict[str, Any] = {"type": key[0] + ".delta"}
    event.update({name: value for name, value in zip(_INDEXES, key[1:], strict=True) if value is not None})
    event["delta"] = text
    return event


def error_event(message: str) -> dict[str, Any]:
    """The documented `error` event, with an `error` object too: the `openai` client raises `APIError`
    on a stream event holding one (as for chat streams), instead of handing it over as an event."""
    error = {"message": message, "type": "policy_blocked", "param": None, "code": "policy_blocked"}
    return {"type": "error", "code": "policy_blocked", "message": message, "param": None, "error": error}
