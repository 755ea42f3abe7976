"""Where a request body carries text, as slots that can be read and rewritten in place: every string
of the body, keys included, except under keys that hold no text (`NON_TEXT`: images, audio, the
model name, token ids). A message's content parts are one text, as the model server joins them;
JSON in tool-call `arguments` is judged decoded. Token ids are text the policy cannot read
(`token_ids` says where they are, and the hook refuses them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from sentinel.interaction import Operation, Protocol

Slot = tuple[Any, Any]
"""(container, key): `container[key]` is a str."""

Unit = list[Slot]
"""Slots read as one text, joined by a line break: a message's content parts, which vLLM and
llama.cpp join that way before the model reads them (a keyword split across two parts is one)."""

DEPTH = 64
"""Deeper than this a body is refused rather than judged in part (a tool schema nested 40 deep
hid its description)."""

NON_TEXT = frozenset(
    (
        "model",  # routing, not read by the model
        "images",  # Ollama: base64 images
        "image_url",  # OpenAI parts and Responses items: URLs or data: URLs
        "input_audio",
        "file_data",
        "video_url",
        "multimodal_data",  # llama.cpp prompt objects
        "logit_bias",  # token ids as keys
        "context",  # Ollama token ids (refused separately)
    )
)
"""Keys whose values are not text the model reads; every other string of a body, keys included, is."""

_TOP_LEVEL_ONLY = frozenset(("model", "context"))
"""Not text only as fields of the body itself: elsewhere (`chat_template_kwargs: {"model": ...}`) they
may be text a template renders."""

_PART_TEXT = ("text",)

_STRUCTURAL_NAMES = (
    "model user messages prompt suffix system template context input options tools functions instructions"
    " temperature top_p max_tokens max_completion_tokens max_output_tokens n_predict stream documents"
    " role content name refusal reasoning_content reasoning thinking tool_name tool_calls function_call"
    " tool_call_id id type function index arguments description parameters call_id output text"
    " properties items required enum title default format anyOf oneOf allOf $defs $ref strict"
    " additionalProperties chat_template chat_template_kwargs"
)
STRUCTURAL = frozenset(_STRUCTURAL_NAMES.split())
"""Keys the protocols themselves define: their names are not judged as text (a keyword rule that
happens to say `system` must not rename Ollama's `system` field); their values are."""


class TooDeep(ValueError):
    """The body nests deeper than `DEPTH`."""


class _Keys:
    """A dict's keys as slots: reading gives the key, writing renames it (a redacted property name)."""

    __slots__ = ("target",)

    def __init__(self, target: dict[str, Any]) -> None:
        self.target = target

    def __getitem__(self, key: str) -> str:
        return key

    def __setitem__(self, key: str, new: str) -> None:
        items = [(new if name == key else name, value) for name, value in self.target.items()]
        self.target.clear()
        self.target.update(items)


class Encoded:
    """A string that holds JSON (tool-call `arguments`): its decoded strings and keys are what is
    judged, since `\\u0065` is `e` to whoever reads the arguments; `store` writes a redaction back."""

    __slots__ = ("container", "decoded", "key")

    def __init__(self, container: Any, key: Any, decoded: Any) -> None:
        self.container, self.key, self.decoded = container, key, decoded

    def store(self) -> None:
        """Write the decoded value back if a redaction changed it (else the string stays as it came)."""
        if orjson.loads(self.container[self.key]) != self.decoded:
            self.container[self.key] = orjson.dumps(self.decoded).decode()


@dataclass(slots=True)
class Texts:
    """Where a body carries text: `units` (values, then keys, so renaming a key comes last) and the
    JSON strings whose decoded form was walked."""

    units: list[Unit] = field(default_factory=list)
    keys: list[Unit] = field(default_factory=list)
    encoded: list[Encoded] = field(default_factory=list)

    def all(self) -> list[Unit]:
        return self.units + self.keys


def _decode(value: str) -> Any:
    if value[:1] not in "{[" and value.lstrip()[:1] not in ("{", "["):
        return None
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict | list) else None


def _walk(container: Any, key: Any, found: Texts, taken: set[tuple[int, Any]], depth: int) -> None:
    value = container[key]
    if isinstance(value, str):
        if (id(container), key) in taken:
            return
        decoded = _decode(value) if key == "arguments" else None
        if decoded is None:
            found.units.append([(container, key)])
            return
        holder = [decoded]
        found.encoded.append(Encoded(container, key, decoded))
        _walk(holder, 0, found, taken, depth + 1)
        return
    if depth > DEPTH and isinstance(value, dict | list):
        raise TooDeep(f"the body nests deeper than {DEPTH} levels")
    if isinstance(value, dict):
        names = _Keys(value)
        for name in list(value):
            if not isinstance(name, str) or (name in NON_TEXT and (depth == 0 or name not in _TOP_LEVEL_ONLY)):
                continue
            if name not in STRUCTURAL:
                found.keys.append([(names, name)])
            _walk(value, name, found, taken, depth + 1)
    elif isinstance(value, list):
        for index in range(len(value)):
            _walk(value, index, found, taken, depth + 1)


def _parts(messages: Any, found: Texts, taken: set[tuple[int, Any]]) -> None:
    """Each message's content parts as one unit (plain strings and `text` parts)."""
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        unit: Unit = []
        for index, part in enumerate(content):
            if isinstance(part, str):
                unit.append((content, index))
            elif isinstance(part, dict):
                unit.extend((part, key) for key in _PART_TEXT if isinstance(part.get(key), str))
        if len(unit) > 1:
            found.units.append(unit)
            taken.update((id(container), key) for container, key in unit)


def argument_texts(function: dict[str, Any]) -> Texts:
    """A tool call's `arguments` (a JSON string, decoded when it parses, or Ollama's object): every
    string and key in them. Raises `TooDeep`."""
    found = Texts()
    if "arguments" in function:
        _walk(function, "arguments", found, set(), 0)
    return found


_HEX = frozenset("0123456789abcdefABCDEF")


def _escape_prefix(text: str) -> bool:
    """`text` (shorter than 6) could be the start of a `\\uXXXX` escape (empty included)."""
    return "\\u"[: len(text[:2])] == text[:2] and all(char in _HEX for char in text[2:])


def unescape(text: str) -> tuple[str, str]:
    """JSON string content with its `\\uXXXX` escapes written as the characters they stand for (a
    surrogate pair as one character), except those JSON requires escaped (quote, backslash, control
    characters, lone surrogates); the same JSON to whoever decodes it, readable to the policy.
    Returns (text, carry): an escape cut off at the end is carried to the next piece."""
    if "\\" not in text:
        return text, ""
    out: list[str] = []
    at, size = 0, len(text)
    while at < size:
        slash = text.find("\\", at)
        if slash < 0:
            out.append(text[at:])
            break
        out.append(text[at:slash])
        if slash + 1 >= size:
            return "".join(out), text[slash:]
        if text[slash + 1] != "u":
            out.append(text[slash : slash + 2])
            at = slash + 2
            continue
        digits = text[slash + 2 : slash + 6]
        if not all(char in _HEX for char in digits):
            out.append(text[slash : slash + 2])
            at = slash + 2
            continue
        if len(digits) < 4:
            return "".join(out), text[slash:]
        code = int(digits, 16)
        end = slash + 6
        if 0xD800 <= code < 0xDC00:
            low = text[end : end + 6]
            if len(low) < 6 and _escape_prefix(low):
                return "".join(out), text[slash:]  # the low half may come in the next piece
            if len(low) == 6 and low[:2] == "\\u" and all(c in _HEX for c in low[2:]):
                second = int(low[2:], 16)
                if 0xDC00 <= second < 0xE000:
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (second - 0xDC00)))
                    at = end + 6
                    continue
        char = chr(code)
        keep = char in '"\\' or code < 0x20 or 0xD800 <= code < 0xE000
        out.append(text[slash:end] if keep else char)
        at = end
    return "".join(out), ""


def request_texts(body: dict[str, Any]) -> Texts:
    """Every string of a request body, values and keys, except under `NON_TEXT` keys; a message's
    content parts joined as one text; JSON in tool-call `arguments` decoded. Raises `TooDeep`."""
    found = Texts()
    taken: set[tuple[int, Any]] = set()
    _parts(body.get("messages"), found, taken)
    _parts(body.get("input"), found, taken)  # Responses API message items
    _walk([body], 0, found, taken, 0)
    return found


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
