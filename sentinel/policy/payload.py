"""Where a request body carries text, per protocol and operation, as slots that can be read and
rewritten in place: chat messages (content, plain or `text` parts; `name`, `refusal`, reasoning and
tool-call arguments in the history), tool and function definitions (every string in them:
descriptions, parameter schemas), completion prompts and `suffix`, Ollama's `system` and
`template`, embeddings input. Images are not text and are skipped; token ids are text the policy
cannot read (`token_ids` says where they are, and the hook refuses them)."""

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


_MESSAGE_TEXT = ("name", "refusal", "reasoning_content", "reasoning", "thinking", "tool_name")
_DEPTH = 32


def leaves(container: Any, key: Any, slots: list[Slot], depth: int = 0) -> None:
    """Every string anywhere under `container[key]` (tool definitions, Ollama's object arguments)."""
    try:
        value = container[key]
    except (KeyError, IndexError, TypeError):
        return
    if isinstance(value, str):
        slots.append((container, key))
    elif depth < _DEPTH and isinstance(value, dict):
        for name in value:
            leaves(value, name, slots, depth + 1)
    elif depth < _DEPTH and isinstance(value, list):
        for index in range(len(value)):
            leaves(value, index, slots, depth + 1)


def _calls(message: dict[str, Any], slots: list[Slot]) -> None:
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            leaves(function, "arguments", slots)  # a JSON string (OpenAI) or an object (Ollama)
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        leaves(legacy, "arguments", slots)


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
        for name in _MESSAGE_TEXT:
            _strings(message, name, slots)
        _calls(message, slots)


def text_slots(body: dict[str, Any], protocol: Protocol, operation: Operation) -> list[Slot]:
    slots: list[Slot] = []
    if operation is Operation.CHAT:
        _messages(body.get("messages"), slots)
        leaves(body, "tools", slots)
        leaves(body, "functions", slots)
    elif operation is Operation.TEXT_COMPLETION:
        _strings(body, "prompt", slots)
        prompts = body.get("prompt")
        for item in prompts if isinstance(prompts, list) else ():
            _strings(item, "prompt_string", slots)  # llama.cpp's multimodal prompt objects
        _strings(body, "suffix", slots)
        if protocol is Protocol.OLLAMA:
            _strings(body, "system", slots)
            _strings(body, "template", slots)
    elif operation is Operation.EMBEDDINGS:
        _strings(body, "input", slots)
        if protocol is Protocol.OLLAMA:
            _strings(body, "prompt", slots)  # the older /api/embeddings
    return slots


def _has_ids(value: Any) -> bool:
    """A token-id prompt: a number, or a list holding numbers or lists of numbers."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return True
    return isinstance(value, list) and any(_has_ids(item) for item in value)


def token_ids(body: dict[str, Any], protocol: Protocol, operation: Operation) -> str | None:
    """The field that carries token ids instead of text, if any: a caller could spell a blocked keyword
    in them (`prompt: [5877, 8479]`), and only the model's tokenizer reads them back."""
    if operation is Operation.TEXT_COMPLETION:
        if _has_ids(body.get("prompt")):
            return "prompt"
        if protocol is Protocol.OLLAMA and _has_ids(body.get("context")):
            return "context"
    elif operation is Operation.EMBEDDINGS and _has_ids(body.get("input")):
        return "input"
    return None
