"""The Dify moderation endpoint over real HTTP on the admin port, called the way Dify's
APIBasedExtensionRequestor calls it (`requests`, JSON `{"point", "params"}`, bearer token), with
answers checked against the documented response shapes (the models below mirror Dify's
`ModerationInputsResult` / `ModerationOutputsResult`: `action` is required even when not flagged)."""

from __future__ import annotations

import socket
from enum import Enum
from typing import Any

import pytest
import requests
from pydantic import BaseModel, ConfigDict

from tests.conftest import Running
from tests.policy.conftest import StartWithPolicy
from tests.support.upstream import ScriptedUpstream

TOKEN = "dify-ext-key-123"
POLICY = """
sampling: []
rules:
  - name: violence
    keywords: [kill you]
    action: block
    message: Your content violates our usage policy.
  - name: profanity
    keywords: [darn]
    action: redact
    replacement: '***'
  - name: scoped
    keywords: [hello]
    action: block
    scope: {models: [deepseek-r1]}
phi: {request: redact, response: redact, categories: [ssn]}
moderation: {preset_response: Blocked by policy.}
"""


class ModerationAction(Enum):
    DIRECT_OUTPUT = "direct_output"
    OVERRIDDEN = "overridden"


class ModerationInputsResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flagged: bool = False
    action: ModerationAction
    preset_response: str = ""
    inputs: dict[str, Any] = {}
    query: str = ""


class ModerationOutputsResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flagged: bool = False
    action: ModerationAction
    preset_response: str = ""
    text: str = ""


def call(proxy: Running, body: dict[str, Any], token: str | None = TOKEN, scheme: str = "Bearer") -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    return requests.post(proxy.admin_url + "/dify/moderation", json=body, headers=headers, timeout=(5, 60))


@pytest.fixture
def proxy(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> Running:
    return start_with_policy(upstream.url, POLICY, moderation_token=TOKEN)


def test_ping(proxy: Running) -> None:
    response = call(proxy, {"point": "ping"})
    assert response.status_code == 200 and response.json() == {"result": "pong"}


@pytest.mark.parametrize(("token", "scheme"), [(None, "Bearer"), ("wrong", "Bearer"), (TOKEN, "Basic"), ("", "Bearer")])
def test_auth_failures(proxy: Running, token: str | None, scheme: str) -> None:
    response = call(proxy, {"point": "ping"}, token, scheme)
    assert response.status_code == 401
    assert TOKEN not in response.text


def test_input_blocked_gives_direct_output(proxy: Running) -> None:
    body = {
        "point": "app.moderation.input",
        "params": {
            "app_id": "61248ab4-1125-45be-ae32-0ce91334d021",
            "inputs": {"var_1": "I will kill you.", "var_2": "fine"},
            "query": "Happy everydays.",
        },
    }
    response = call(proxy, body)
    assert response.status_code == 200
    result = ModerationInputsResult(**response.json())
    assert result.flagged is True and result.action is ModerationAction.DIRECT_OUTPUT
    assert result.preset_response == "Your content violates our usage policy."
    assert proxy.metric("sentinel_policy_actions_total", rule="violence", action="block", stage="moderation_input") == 1


def test_input_redacted_gives_overridden(proxy: Running) -> None:
    body = {
        "point": "app.moderation.input",
        "params": {"app_id": "a", "inputs": {"var_1": "darn it", "n": 3}, "query": "my ssn is 219-55-0187"},
    }
    result = ModerationInputsResult(**call(proxy, body).json())
    assert result.flagged is True and result.action is ModerationAction.OVERRIDDEN
    assert result.inputs == {"var_1": "*** it", "n": 3} and result.query == "my ssn is [SSN]"
    assert proxy.metric("sentinel_policy_phi_findings_total", category="ssn", stage="moderation_input") == 1


def test_clean_input_and_scoped_rules_pass(proxy: Running) -> None:
    body = {"point": "app.moderation.input", "params": {"app_id": "a", "inputs": {}, "query": "hello there"}}
    response = call(proxy, body)
    assert response.json() == {"flagged": False, "action": "direct_output", "preset_response": ""}
    result = ModerationInputsResult(**response.json())
    assert result.flagged is False


def test_output_redacted_and_blocked(proxy: Running) -> None:
    redacted = call(
        proxy, {"point": "app.moderation.output", "params": {"app_id": "a", "text": "Oh darn, SSN 219-55-0187"}}
    )
    result = ModerationOutputsResult(**redacted.json())
    assert result.flagged and result.action is ModerationAction.OVERRIDDEN and result.text == "Oh ***, SSN [SSN]"
    blocked = call(proxy, {"point": "app.moderation.output", "params": {"app_id": "a", "text": "I will kill you."}})
    result = ModerationOutputsResult(**blocked.json())
    assert result.flagged and result.action is ModerationAction.DIRECT_OUTPUT
    assert result.preset_response == "Your content violates our usage policy."
    clean = ModerationOutputsResult(
        **call(proxy, {"point": "app.moderation.output", "params": {"text": "Fine."}}).json()
    )
    assert clean.flagged is False


def test_bad_requests(proxy: Running) -> None:
    assert call(proxy, {"point": "app.external_data_tool.query", "params": {}}).status_code == 400
    assert call(proxy, {"params": {}}).status_code == 400
    assert call(proxy, {"point": "app.moderation.input", "params": "x"}).status_code == 400


def test_block_without_rule_message_uses_preset_response(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    proxy = start_with_policy(
        upstream.url,
        "rules: [{name: b, keywords: [nope], action: block}]\nmoderation: {preset_response: Not here.}\n",
        moderation_token=TOKEN,
    )
    result = call(proxy, {"point": "app.moderation.input", "params": {"inputs": {}, "query": "nope"}}).json()
    assert result == {"flagged": True, "action": "direct_output", "preset_response": "Not here."}


def test_endpoint_off_without_token(upstream: ScriptedUpstream, start_with_policy: StartWithPolicy) -> None:
    proxy = start_with_policy(upstream.url, POLICY)
    assert call(proxy, {"point": "ping"}).status_code == 404


def _raw(proxy: Running, request: bytes) -> bytes:
    """Send `request` as is on a real socket; everything the admin port answers until it closes."""
    host, port = proxy.admin_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_wrong_token_is_refused_before_the_body_is_read(proxy: Running) -> None:
    """The head announces 100 MB and no byte of it follows: the answer comes from the head alone."""
    head = b"POST /dify/moderation HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer wrong\r\nContent-Length: 100000000\r\n"
    assert _raw(proxy, head + b"Content-Type: application/json\r\n\r\n").startswith(b"HTTP/1.1 401 ")


def test_bodies_over_a_megabyte_get_413(proxy: Running) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    declared = b"POST /dify/moderation HTTP/1.1\r\nHost: s\r\n" + auth + b"Content-Length: 2000000\r\n\r\n"
    assert _raw(proxy, declared).startswith(b"HTTP/1.1 413 ")
    # No length declared: the body is counted as it streams in, and refused past the limit.
    chunk = b"x" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    head = b"POST /dify/moderation HTTP/1.1\r\nHost: s\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
    assert _raw(proxy, head + chunked).startswith(b"HTTP/1.1 413 ")
    assert call(proxy, {"point": "ping"}).status_code == 200  # and the endpoint still answers


def test_wrong_tokens_count_as_failed_logins_and_are_throttled(
    upstream: ScriptedUpstream, start_with_policy: StartWithPolicy
) -> None:
    proxy = start_with_policy(upstream.url, POLICY, moderation_token=TOKEN)
    limit = proxy.sentinel.extras["auth"].logins.limit
    statuses = [call(proxy, {"point": "ping"}, "wrong").status_code for _ in range(limit + 2)]
    assert statuses == [401] * limit + [429, 429]
    assert proxy.metric("sentinel_admin_auth_failures_total", reason="invalid") == limit
    assert proxy.metric("sentinel_admin_auth_failures_total", reason="throttled") == 2
    assert call(proxy, {"point": "ping"}).status_code == 200  # the right token still works


def test_inputs_that_are_lists_or_objects_are_moderated(proxy: Running) -> None:
    """Dify's paragraph-list, file and JSON variables arrive as lists and objects, not strings."""
    nested = {"point": "app.moderation.input", "params": {"app_id": "a", "inputs": {"v": [{"note": "darn it"}]}}}
    result = ModerationInputsResult(**call(proxy, nested).json())
    assert result.action is ModerationAction.OVERRIDDEN and result.inputs == {"v": [{"note": "*** it"}]}
    blocked = {"point": "app.moderation.input", "params": {"app_id": "a", "inputs": {"v": ["I will kill you."]}}}
    result = ModerationInputsResult(**call(proxy, blocked).json())
    assert result.flagged is True and result.action is ModerationAction.DIRECT_OUTPUT
