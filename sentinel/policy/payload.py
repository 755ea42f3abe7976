"""Where a request body carries text people wrote, per protocol and operation, as slots that can be
read and rewritten in place: chat message contents (plain or `text` parts), completion prompts, the
Ollama `system` prompt, embeddings input. Token-id prompts and images are not text and are skipped."""

from __future__ import annotations

from typing import Any

from sentinel.interaction import Operation, Protocol

Slot = tuple[Any, Any]
"""(container, key): `container[key]` is a str."""


def _strings(container: Any, key: Any, slots: list[Slot]) -> None:
    """Add `container[key]` if it is a string, or each string in it if it is a list of strings."""
    value = container.get(key) if isinstance(container, dict) else None
    if isinstance(value, str):
        slots.append((container, key))
    elif isinstance(value, list):
        slots.extend((value, index) for index, item in enumerate(value) if isinstance(item, str))


def _messages(messages: Any, slots: list[Slot]) -> None:
    if not isinstance(messages, list):
        return
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            slots.append((message, "content"))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    slots.append((part, "text"))


def text_slots(body: dict[str, Any], protocol: Protocol, operation: Operation) -> list[Slot]:
    slots: list[Slot] = []
    if operation is Operation.CHAT:
        _messages(body.get("messages"), slots)
    elif operation is Operation.TEXT_COMPLETION:
        _strings(body, "prompt", slots)
        if protocol is Protocol.OLLAMA:
            _strings(body, "system", slots)
    elif operation is Operation.EMBEDDINGS:
        _strings(body, "input", slots)
        if protocol is Protocol.OLLAMA:
            _strings(body, "prompt", slots)  # the older /api/embeddings
    return slots
