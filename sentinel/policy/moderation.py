"""Dify's "API-based extension" for moderation, answered with the same rules as the proxy.

Dify POSTs `{"point": ..., "params": ...}` with `Authorization: Bearer <api key>`:
- `ping` -> `{"result": "pong"}` (Dify checks this when the extension is saved);
- `app.moderation.input`, params `app_id`, `inputs` (variables), `query` -> the request-stage rules;
- `app.moderation.output`, params `app_id`, `text` (the answer so far) -> the response-stage rules.
The answer is `{"flagged": false, "action": "direct_output", "preset_response": ""}` when nothing needs
doing (Dify requires an action even then), `direct_output` with a preset response when a block rule
matches, and `overridden` with redacted `inputs`/`query` or `text` when only redact rules do. Flag
rules and PHI findings are counted in metrics but do not flag the call for Dify.

Only rules without a scope apply: Dify's call names no model, API key, user or route.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import orjson

from sentinel.policy.compiled import Policy
from sentinel.policy.matching import Findings, Scanner, redact
from sentinel.policy.metrics import PolicyMetrics

log = logging.getLogger("sentinel.policy")

INPUT = "app.moderation.input"
OUTPUT = "app.moderation.output"
PING = "ping"

Answer = tuple[int, dict[str, Any]]
_PASS: dict[str, Any] = {"flagged": False, "action": "direct_output", "preset_response": ""}


class ModerationEndpoint:
    """Checks the bearer token, then moderates with `policy()` (the policy in force)."""

    def __init__(self, token: str, policy: Callable[[], Policy | None], metrics: PolicyMetrics | None = None) -> None:
        self._token = token.encode()
        self._policy = policy
        self.metrics = metrics

    def authorized(self, authorization: str | None) -> bool:
        """Whether `authorization` carries the configured token (checked before the body is read)."""
        scheme, _, supplied = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), self._token)

    def handle(self, authorization: str | None, body: bytes) -> Answer:
        if not self.authorized(authorization):
            return 401, {"error": "invalid or missing bearer token"}
        return self.moderate(body)

    def moderate(self, body: bytes) -> Answer:
        """Answer one authorized call."""
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, {"error": "body is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("point"), str):
            return 400, {"error": "body must be an object with a string 'point'"}
        point = request["point"]
        if point == PING:
            return 200, {"result": "pong"}
        params = request.get("params")
        if not isinstance(params, dict):
            return 400, {"error": "'params' must be an object"}
        policy = self._policy()
        if policy is None:
            return 503, {"error": "no policy loaded"}
        if point == INPUT:
            return 200, self._input(policy, params)
        if point == OUTPUT:
            return 200, self._output(policy, params)
        return 400, {"error": f"unknown extension point {point!r}"}

    def _input(self, policy: Policy, params: dict[str, Any]) -> dict[str, Any]:
        inputs = params.get("inputs")
        inputs = dict(inputs) if isinstance(inputs, dict) else {}
        query = params.get("query")
        findings = Findings()
        scanner = policy.moderation_input
        new_inputs = {name: _moderate_value(value, scanner, findings, 0) for name, value in inputs.items()}
        new_query = _moderate(query, scanner, findings) if isinstance(query, str) else query
        self._count(findings, "moderation_input")
        if findings.block is not None:
            return _direct(findings, policy)
        if new_inputs != inputs or new_query != query:
            return {
                "flagged": True,
                "action": "overridden",
                "inputs": new_inputs,
                "query": new_query if isinstance(new_query, str) else "",
            }
        return dict(_PASS)

    def _output(self, policy: Policy, params: dict[str, Any]) -> dict[str, Any]:
        text = params.get("text")
        if not isinstance(text, str):
            return dict(_PASS)
        findings = Findings()
        new_text = _moderate(text, policy.moderation_output, findings)
        self._count(findings, "moderation_output")
        if findings.block is not None:
            return _direct(findings, policy)
        if new_text != text:
            return {"flagged": True, "action": "overridden", "text": new_text}
        return dict(_PASS)

    def _count(self, findings: Findings, stage: str) -> None:
        if findings and self.metrics is not None:
            self.metrics.findings(findings, stage)


def _moderate(text: str, scanner: Scanner, findings: Findings) -> str:
    hits = scanner.scan(text) if scanner else []
    return redact(text, hits, findings) if hits else text


_DEPTH = 64


def _moderate_value(value: Any, scanner: Scanner, findings: Findings, depth: int) -> Any:
    """A variable's value, redacted: a string, or every string (and key) in a list or object (Dify's
    file and JSON variables). Deeper than `_DEPTH` a value is judged as its JSON text, unredacted."""
    if isinstance(value, str):
        return _moderate(value, scanner, findings)
    if depth > _DEPTH and isinstance(value, dict | list):
        _moderate(orjson.dumps(value).decode(), scanner, findings)
        return value
    if isinstance(value, list):
        return [_moderate_value(item, scanner, findings, depth + 1) for item in value]
    if isinstance(value, dict):
        return {
            _moderate(key, scanner, findings) if isinstance(key, str) else key: _moderate_value(
                item, scanner, findings, depth + 1
            )
            for key, item in value.items()
        }
    return value


def _direct(findings: Findings, policy: Policy) -> dict[str, Any]:
    assert findings.block is not None
    message = findings.block.message or policy.preset_response
    return {"flagged": True, "action": "direct_output", "preset_response": message}
