"""Reading a request body the way the model server will, so the policy judges what the server acts on.

orjson (strict RFC 8259) is tried first, for speed. A body it refuses may still be accepted upstream:
FastAPI/pydantic servers (vLLM, SGLang) read bodies with Python's `json`, which takes `NaN`,
`Infinity`, lone surrogate escapes (`"\\ud800"`), a UTF-8 byte-order mark and UTF-16/32. So the body
is read again with Python's `json`; only what even that refuses is `Unparseable`, and the policy
refuses it rather than forwarding text it never read (docs/policy.md, "Fail closed").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson


class Unparseable(ValueError):
    """The body is not JSON any model server would read; the message says why (never the body)."""


@dataclass(frozen=True, slots=True)
class Parsed:
    body: Any
    lenient: bool
    """Read by Python's `json` (not orjson): write it back the same way (`dump`), so `NaN` stays `NaN`
    and lone surrogates stay escaped instead of failing or turning into `null`."""

    def dump(self) -> bytes:
        if self.lenient:
            return json.dumps(self.body, allow_nan=True, separators=(",", ":")).encode()
        return orjson.dumps(self.body)


def parse(raw: bytes) -> Parsed:
    try:
        return Parsed(orjson.loads(raw), lenient=False)
    except orjson.JSONDecodeError:
        pass
    try:
        return Parsed(json.loads(raw), lenient=True)
    except UnicodeDecodeError:
        raise Unparseable("the body is not valid UTF-8, UTF-16 or UTF-32 text") from None
    except json.JSONDecodeError as exc:
        raise Unparseable(f"the body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise Unparseable("the body nests too deeply to be judged") from None


class _Duplicate(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise _Duplicate(key)
        out[key] = value
    return out


def duplicate_key(raw: bytes) -> str | None:
    """A key given twice in one object with different values, if any. Parsers disagree on such a
    body: Python's `json` and orjson keep the last value, Go's decoder (Ollama) merges two objects
    given for one field (`"options"` twice, a tool call's `"function"` twice), so the text the policy
    judged would not be all the model server reads."""
    try:
        json.loads(raw, object_pairs_hook=_pairs)
    except _Duplicate as exc:
        return str(exc)
    except (ValueError, RecursionError):
        return None  # judged or refused by `parse`
    return None
