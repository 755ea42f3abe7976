"""Object keys read the way Ollama reads them, so a caller cannot hide a field from the policy by its
spelling.

Ollama (and its OpenAI-compatible routes) decodes request bodies with Go's `encoding/json`, which
matches a JSON key to a struct field case-insensitively, with Unicode simple case folding:
`"Prompt"`, `"PROMPT"`, `"\u017fystem"` (long s) and `"\u212aeep_alive"` (Kelvin sign) all fill the
field, and of two keys for one field the last wins. The policy reads fields by their exact names, so
before judging a body its keys are folded at the levels Go decodes into structs (the body, each
message, its tool calls and their function, `options`): a key that folds to a field the policy reads
is renamed to that field's canonical spelling (the forwarded body then says what was judged), and two
keys that fold to the same name make the body ambiguous, which is refused (docs/policy.md, "Fail
closed"). The model server Sentinel fronts is not known, so every JSON body is treated this way;
a pydantic server (vLLM) ignored the odd spelling, so renaming it only makes the request mean what
it looked like to the policy.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

_TOP = (
    "model user messages prompt suffix system template context input options tools functions instructions"
    " temperature top_p max_tokens max_completion_tokens max_output_tokens n_predict stream documents"
    " chat_template chat_template_kwargs images raw format think"
)
_MESSAGE = (
    "role content name refusal reasoning_content reasoning thinking tool_name tool_calls function_call images"
    " tool_call_id"
)
_CALL = "id type function index"
_FUNCTION = "name arguments description parameters"
_OPTIONS = "temperature top_p num_predict"


@lru_cache(maxsize=4096)
def fold(name: str) -> str:
    """Go's `foldName`: ASCII letters upper-cased, every other character replaced by the smallest
    character of its simple case-folding orbit (long s U+017F -> `S`, Kelvin sign U+212A -> `K`)."""
    if name.isascii():
        return name.upper()
    out = []
    for char in name:
        candidates = [char]
        for other in (char.lower(), char.upper(), char.lower().upper(), char.upper().lower()):
            if len(other) == 1:
                candidates.append(other)
        out.append(min(candidates))
    return "".join(out)


def _table(names: str) -> dict[str, str]:
    return {fold(name): name for name in names.split()}


_TOP_NAMES = _table(_TOP)
_MESSAGE_NAMES = _table(_MESSAGE)
_CALL_NAMES = _table(_CALL)
_FUNCTION_NAMES = _table(_FUNCTION)
_OPTIONS_NAMES = _table(_OPTIONS)


class Ambiguous(ValueError):
    """Two keys of one object name the same field for a case-insensitive reader; the message says which."""


def _canonical(obj: dict[str, Any], names: dict[str, str], where: str) -> bool:
    """Rename in place; True if anything was renamed. Raises `Ambiguous` on two keys for one name."""
    if all(key.isascii() and key == key.lower() for key in obj):
        return False  # the usual case: lower-case ASCII keys that differ fold differently
    seen: dict[str, str] = {}
    renames: list[tuple[str, str]] = []
    for key in obj:
        folded = fold(key)
        if folded in seen:
            raise Ambiguous(
                f"{where} has keys {seen[folded]!r} and {key!r}, which a case-insensitive reader takes as one"
            )
        seen[folded] = key
        canonical = names.get(folded)
        if canonical is not None and canonical != key:
            renames.append((key, canonical))
    if not renames:
        return False
    items = list(obj.items())
    obj.clear()
    renamed = dict(renames)
    for key, value in items:
        obj[renamed.get(key, key)] = value
    return True


def canonicalise(body: dict[str, Any]) -> bool:
    """Fold the keys of a request body where Go's decoder would (see the module docstring); True if
    any key was renamed. Raises `Ambiguous`."""
    changed = _canonical(body, _TOP_NAMES, "the body")
    options = body.get("options")
    if isinstance(options, dict):
        changed |= _canonical(options, _OPTIONS_NAMES, "options")
    messages = body.get("messages")
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        if not isinstance(message, dict):
            continue
        changed |= _canonical(message, _MESSAGE_NAMES, f"messages[{index}]")
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                changed |= _canonical(call, _CALL_NAMES, f"messages[{index}].tool_calls")
                function = call.get("function")
                if isinstance(function, dict):
                    changed |= _canonical(function, _FUNCTION_NAMES, f"messages[{index}].tool_calls[].function")
    return changed
