"""What the parsers extract: `RequestFacts` from the request body, `ResponseFacts` from the answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sentinel.interaction import Usage


@dataclass(slots=True)
class RequestFacts:
    json_valid: bool | None = None
    model: str | None = None
    stream: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    messages: Any = None
    user: str | None = None


@dataclass(slots=True)
class ResponseFacts:
    """Accumulates a response, streamed or whole, choice by choice."""

    model: str | None = None
    texts: dict[int, list[str]] = field(default_factory=dict)
    reasoning: dict[int, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    first_token_chunk: int | None = None
    """Index of the network chunk that completed the first event carrying generated output."""
    error_message: str | None = None
    done: bool = False
    events: int = 0

    def add_text(self, choice: int, text: Any, chunk: int) -> None:
        if isinstance(text, str) and text:
            self.texts.setdefault(choice, []).append(text)
            self._first(chunk)

    def add_reasoning(self, choice: int, text: Any, chunk: int) -> None:
        if isinstance(text, str) and text:
            self.reasoning.setdefault(choice, []).append(text)
            self._first(chunk)

    def merge_tool_calls(self, choice: int, deltas: Any, chunk: int) -> None:
        """Merge OpenAI tool-call deltas: fields by `index`, `function.arguments` concatenated."""
        if not isinstance(deltas, list) or not deltas:
            return
        calls = self.tool_calls.setdefault(choice, {})
        for position, delta in enumerate(deltas):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index", position if not calls else len(calls))
            call = calls.setdefault(
                index, {"id": None, "type": "function", "function": {"name": None, "arguments": ""}}
            )
            if delta.get("id"):
                call["id"] = delta["id"]
            if delta.get("type"):
                call["type"] = delta["type"]
            function = delta.get("function")
            if isinstance(function, dict):
                if function.get("name"):
                    call["function"]["name"] = function["name"]
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    call["function"]["arguments"] += arguments
                elif arguments is not None:
                    call["function"]["arguments"] = arguments
        self._first(chunk)

    def add_tool_calls(self, choice: int, calls: Any, chunk: int) -> None:
        """Append whole tool calls (Ollama sends each call complete)."""
        if not isinstance(calls, list) or not calls:
            return
        existing = self.tool_calls.setdefault(choice, {})
        for call in calls:
            existing[len(existing)] = call
        self._first(chunk)

    def _first(self, chunk: int) -> None:
        if self.first_token_chunk is None:
            self.first_token_chunk = chunk

    def text(self, choice: int = 0) -> str | None:
        parts = self.texts.get(choice)
        return "".join(parts) if parts else None

    def reasoning_text(self) -> str | None:
        parts = self.reasoning.get(0)
        return "".join(parts) if parts else None

    def calls(self) -> list[dict[str, Any]] | None:
        calls = self.tool_calls.get(0)
        return [calls[k] for k in sorted(calls)] if calls else None

    def extra_choices(self) -> list[str] | None:
        others = sorted(k for k in self.texts if k != 0)
        return ["".join(self.texts[k]) for k in others] or None


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
