"""Reading a policy file: YAML in, a compiled `Policy` out, or a `PolicyError` whose lines each name
the rule and the field at fault (`rules[1] 'codenames' -> action: ...`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sentinel.policy.compiled import Policy, RuleError
from sentinel.policy.model import PolicyFile


class PolicyError(Exception):
    """The policy file cannot be used; the message lists every problem, each naming its rule and field."""


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _where(loc: tuple[Any, ...], raw: Any) -> str:
    """`('rules', 2, 'patterns', 0)` -> `rules[2] 'codenames' -> patterns[0]`."""
    parts: list[str] = []
    node = raw
    for index, part in enumerate(loc):
        if isinstance(part, int):
            entry = node[part] if isinstance(node, list) and part < len(node) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            label = f"[{part}]" + (f" {name!r}" if isinstance(name, str) and index == 1 else "")
            parts[-1:] = [(parts[-1] if parts else "") + label]
        else:
            parts.append(str(part))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return " -> ".join(parts) if parts else "(policy)"


def _describe(error: ValidationError, raw: Any) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        message = message.removeprefix("Value error, ")
        lines.append(f"  {_where(loc, raw)}: {message}")
    return "\n".join(lines)


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Validate and compile policy YAML; raises `PolicyError`."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(f"{source} must hold a mapping (sampling, rules, phi, moderation)")
    try:
        model = PolicyFile.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"{source} is invalid:\n{_describe(exc, raw)}") from None
    try:
        return Policy(model, text, digest(text))
    except RuleError as exc:
        raise PolicyError(f"{source} is invalid:\n  {exc}") from None


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {path} is not UTF-8 text") from None
    return parse_policy(text, f"policy file {path}")
