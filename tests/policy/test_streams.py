"""Redaction of streamed text: whatever the chunk boundaries, the client gets what redacting the whole
text at once gives, and only a tail that could still become a match is held back."""

from __future__ import annotations

import random

import orjson
import pytest

from sentinel.interaction import Operation
from sentinel.policy.compiled import Active
from sentinel.policy.loading import parse_policy
from sentinel.policy.matching import Findings, Scanner, redact
from sentinel.policy.streams import Blocked, NdjsonRewriter, SseRewriter, TextStream
from tests.support.frames import ollama_chat_stream, vllm_chat_stream

POLICY = """
sampling: []
rules:
  - name: codenames
    keywords: [project titan, bluebird, 秘密]
    action: redact
  - name: tickets
    patterns: ['TK-\\d{3,6}']
    action: redact
    replacement: '[TICKET]'
phi: {response: redact, categories: [ssn, email]}
"""

TEXT = (
    "Bluebird and Project  Titan differ; project titan ships. 这是秘密。 Ticket TK-4412, "
    "SSN 219-55-0187, mail jane.doe@example.org. bluebirds are birds."
)


def active(policy: str = POLICY) -> Active:
    compiled = parse_policy(policy)
    return compiled.select(compiled.plan("/v1/chat/completions", Operation.CHAT), "m", None, lambda: None)


def whole(scanner: Scanner, text: str) -> str:
    return redact(text, scanner.scan(text), Findings())


def streamed(scanner: Scanner, pieces: list[str]) -> tuple[str, list[str]]:
    stream = TextStream(scanner, Findings())
    outs = [stream.push(piece) for piece in pieces]
    return "".join(outs) + stream.flush(), outs


def test_every_two_way_split_gives_the_whole_text_redaction() -> None:
    scanner = active().rewrite
    expected = whole(scanner, TEXT)
    assert "[REDACTED] and [REDACTED] differ; [REDACTED] ships. 这是[REDACTED]。 Ticket [TICKET]" in expected
    assert "[SSN]" in expected and "[EMAIL]" in expected and "bluebirds are birds" in expected
    for cut in range(1, len(TEXT)):
        assert streamed(scanner, [TEXT[:cut], TEXT[cut:]])[0] == expected, cut


def test_token_sized_random_splits() -> None:
    scanner = active().rewrite
    expected = whole(scanner, TEXT)
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(TEXT)), rng.randint(5, 40)))
        pieces = [TEXT[a:b] for a, b in zip([0, *cuts], [*cuts, len(TEXT)], strict=True)]
        assert streamed(scanner, pieces)[0] == expected


def test_keyword_rules_hold_back_only_a_possible_keyword_start() -> None:
    scanner = active(
        "sampling: []\nphi: {enabled: false}\nrules:\n  - {name: k, keywords: [bluebird], action: redact}\n"
    ).rewrite
    _, outs = streamed(scanner, ["Hello there, ", "the blue", "bird flies", " home"])
    assert outs == ["Hello there, ", "the ", "[REDACTED] flies", " home"]


def test_counts_each_redaction_once() -> None:
    scanner = active().rewrite
    findings = Findings()
    stream = TextStream(scanner, findings)
    for piece in ["blue", "bird, blue", "bird", " SSN 219-55-", "0187."]:
        stream.push(piece)
    stream.flush()
    assert findings.rules == {("codenames", "redact"): 2, ("phi", "redact"): 1}
    assert findings.phi == {"ssn": 1}


def test_block_found_across_a_boundary() -> None:
    scanner = active("sampling: []\nrules:\n  - {name: b, keywords: [launch code], action: block}\n").rewrite
    stream = TextStream(scanner, Findings())
    assert stream.push("the launch") == "the "
    with pytest.raises(Blocked) as caught:
        stream.push(" code is")
    assert caught.value.detector.rule == "b"


def test_sse_frames_stay_well_formed_and_reasoning_flushes_before_the_answer() -> None:
    rewriter = SseRewriter(active().rewrite, Findings())
    frames = vllm_chat_stream(["think of blue", "bird"], ["The blue", "bird", " flies"])
    data = b"".join(frames)
    # Feed in odd-sized network chunks that split frames too.
    out = b"".join(rewriter.feed(data[i : i + 37]) for i in range(0, len(data), 37)) + rewriter.finish()
    events = [e for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    deltas = [orjson.loads(e[6:])["choices"][0]["delta"] if orjson.loads(e[6:])["choices"] else {} for e in events]
    reasoning = [d.get("reasoning_content") for d in deltas if d.get("reasoning_content")]
    answer = [d.get("content") for d in deltas if d.get("content")]
    assert "".join(reasoning) == "think of [REDACTED]" and "".join(answer) == "The [REDACTED] flies"
    assert not any(
        "content" in d and "reasoning_content" in d and d["content"] and d["reasoning_content"] for d in deltas
    )
    first_answer = next(i for i, d in enumerate(deltas) if d.get("content"))
    last_reasoning = max(i for i, d in enumerate(deltas) if d.get("reasoning_content"))
    assert last_reasoning < first_answer
    assert out.endswith(b"data: [DONE]\n\n") and b": keep-alive\n\n" in out


def test_ndjson_lines_stay_well_formed() -> None:
    rewriter = NdjsonRewriter(active().rewrite, Findings())
    lines = ollama_chat_stream(["hmm TK-", "12345"], ["mail jane", ".doe@example.", "org now"])
    out = b"".join(rewriter.feed(line) for line in lines) + rewriter.finish()
    objects = [orjson.loads(line) for line in out.splitlines()]
    assert "".join(o["message"].get("thinking", "") for o in objects) == "hmm [TICKET]"
    assert "".join(o["message"].get("content", "") for o in objects) == "mail [EMAIL] now"
    assert objects[-1]["done"] is True and objects[-1]["eval_count"] == 13
