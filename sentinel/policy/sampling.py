"""Sampling bounds: keep `temperature`, `top_p` and the token limit of a generation request inside the
ranges a policy allows, by clamping or by refusing, for OpenAI-style and Ollama-native bodies.

A request that omits a bounded parameter is left alone (the model server's default applies) unless
the bound names a `default` to inject; docs/policy.md says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from sentinel.interaction import Protocol
from sentinel.policy.model import Bound, SamplingRule

# Where each bounded parameter lives: (container key or None for the top level, field names).
Places = dict[str, tuple[str | None, tuple[str, ...]]]
_OPENAI: Places = {
    "temperature": (None, ("temperature",)),
    "top_p": (None, ("top_p",)),
    "max_tokens": (None, ("max_tokens", "max_completion_tokens", "max_output_tokens", "n_predict")),
}
_OLLAMA: Places = {
    "temperature": ("options", ("temperature",)),
    "top_p": ("options", ("top_p",)),
    "max_tokens": ("options", ("num_predict",)),
}


@dataclass(slots=True)
class SamplingOutcome:
    changed: bool = False
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per field: requested and applied value, what was done (clamp, default, within, reject), which rule."""
    refusal: str | None = None


_AS_FLOAT = TypeAdapter(float)
_AS_INT = TypeAdapter(int)


def _number(value: Any, integer: bool, coerce: bool) -> float | None:
    """The value the model server will use. OpenAI-compatible servers built on pydantic (vLLM, SGLang)
    coerce `"2.0"` and `true` to numbers, so they are judged as those numbers; Ollama's Go decoder
    refuses anything but a JSON number, so there a non-number is left for it to refuse."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not coerce:
        return None
    try:
        return float(_AS_INT.validate_python(value) if integer else _AS_FLOAT.validate_python(value))
    except ValidationError:
        return None  # the model server refuses it too


def _fit(value: float, bound: Bound, unlimited_negative: bool) -> float:
    if unlimited_negative and value < 0:
        value = math.inf  # Ollama's num_predict -1 (no limit) / -2 (fill the context)
    if bound.min is not None and value < bound.min:
        return bound.min
    if bound.max is not None and value > bound.max:
        return bound.max
    return value


def _describe(bound: Bound) -> str:
    if bound.min is None:
        return f"the maximum {bound.max:g}"
    if bound.max is None:
        return f"the minimum {bound.min:g}"
    return f"the range {bound.min:g}-{bound.max:g}"


def apply_bounds(body: dict[str, Any], protocol: Protocol, rules: Sequence[SamplingRule]) -> SamplingOutcome:
    """Clamp (or refuse) in place; each matching rule narrows what the ones before it allowed."""
    outcome = SamplingOutcome()
    ollama = protocol is Protocol.OLLAMA
    # On Ollama's routes both shapes are bounded: llama.cpp serves /api/chat with its OpenAI handler,
    # which reads top-level temperature, top_p and max_tokens (a default goes only into `options`).
    places: list[tuple[Places, bool, bool]] = (
        [(_OLLAMA, False, True), (_OPENAI, True, False)] if ollama else [(_OPENAI, True, True)]
    )
    for rule in rules:
        for table, coerce, inject in places:
            _bound_rule(body, rule, table, coerce, inject, outcome)
            if outcome.refusal is not None:
                return outcome
    return outcome


def _bound_rule(
    body: dict[str, Any],
    rule: SamplingRule,
    places: Places,
    coerce: bool,
    inject: bool,
    outcome: SamplingOutcome,
) -> None:
    for param, (container_key, names) in places.items():
        bound: Bound | None = getattr(rule, param)
        if bound is None:
            continue
        container = body
        if container_key is not None:
            nested = body.get(container_key)
            if not isinstance(nested, dict):
                if bound.default is None:
                    continue
                nested = body[container_key] = {}
                outcome.changed = True
            container = nested
        present = [name for name in names if container.get(name) is not None]
        if not present and inject and bound.default is not None:
            value: int | float = int(bound.default) if param == "max_tokens" else bound.default
            container[names[0]] = value
            outcome.changed = True
            outcome.notes[names[0]] = {"requested": None, "applied": value, "action": "default", "rule": rule.name}
        for name in present:
            requested = container[name]
            number = _number(requested, param == "max_tokens", coerce)
            if number is None:
                continue  # not a number: the model server rejects it itself
            # NaN has no nearest bound to clamp to: it is refused below.
            fitted = (
                number
                if math.isnan(number)
                else _fit(number, bound, unlimited_negative=name in ("num_predict", "n_predict"))
            )
            if fitted == number:  # a within-range string goes on as it came: the server reads the same number
                outcome.notes.setdefault(
                    name, {"requested": requested, "applied": requested, "action": "within", "rule": rule.name}
                )
                continue
            if bound.action == "reject" or math.isnan(number):
                outcome.notes[name] = {
                    "requested": requested,
                    "applied": None,
                    "action": "reject",
                    "rule": rule.name,
                }
                outcome.refusal = (
                    f"{name} {requested!r} is outside {_describe(bound)}, set by policy rule {rule.name!r}"
                    if not isinstance(requested, int | float) or isinstance(requested, bool)
                    else f"{name} {requested} is outside {_describe(bound)}, set by policy rule {rule.name!r}"
                )
                return
            applied: int | float = int(fitted) if param == "max_tokens" else fitted
            container[name] = applied
            outcome.changed = True
            first = outcome.notes.get(name, {}).get("requested", requested)
            outcome.notes[name] = {"requested": first, "applied": applied, "action": "clamp", "rule": rule.name}
