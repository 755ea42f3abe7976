"""The policy file: defaults, and errors that name the rule and the field at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentinel.interaction import Operation
from sentinel.policy.loading import PolicyError, load_policy, parse_policy


def test_empty_file_means_the_seed_temperature_bounds_and_phi_flagging() -> None:
    policy = parse_policy("")
    (rule,) = policy.source.sampling
    assert rule.temperature is not None and (rule.temperature.min, rule.temperature.max) == (0.1, 0.9)
    assert rule.temperature.action == "clamp" and rule.temperature.default is None
    assert policy.source.phi.request == "flag" and policy.source.phi.response == "flag"
    assert policy.digest.startswith("sha256:")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules:\n  - {name: x, keywords: [a], action: nuke}\n", "rules[0] 'x' -> action: Input should be"),
        (
            "rules:\n  - {name: x, patterns: ['(?<=a)b'], action: flag}\n",
            "rules[0] 'x' -> patterns[0]: not a valid RE2",
        ),
        (
            "rules:\n  - {name: ok, keywords: [a], action: flag}\n  - {name: y, patterns: ['a+'], action: redact}\n",
            "rules[1] 'y' -> patterns[0]: unbounded pattern",
        ),
        (
            "sampling:\n  - {name: t, temperature: {min: 1, max: 0.5}}\n",
            "sampling[0] 't' -> temperature: min 1.0 is above",
        ),
        ("sampling:\n  - {name: t, temperature: {max: 0.5, default: 0.7}}\n", "default 0.7 is outside"),
        ("phi: {categories: [ssn, dna]}\n", "phi -> categories[1]"),
        ("rules: [{name: z, keywords: [a], action: flag, colour: red}]\n", "rules[0] 'z' -> colour: unknown field"),
        ("rules: [{name: z, keywords: [' '], action: flag}]\n", "keywords[0] is empty"),
        (
            "rules: [{name: z, action: flag, keywords: [a]}, {name: z, keywords: [b], action: flag}]\n",
            "'z' is used twice",
        ),
        ("rules: [{name: z, keywords: [a]}]\n", "rules[0] 'z' -> action: Field required"),
        ("- a\n", "must hold a mapping"),
        ("rules: [unclosed\n", "not valid YAML"),
    ],
)
def test_errors_name_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert message in str(caught.value)


def test_a_secret_key_mistaken_for_a_fingerprint_is_not_echoed() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("rules: [{name: k, keywords: [a], action: flag, scope: {api_keys: [sk-live-123456]}}]\n")
    assert "api_keys: entry 0 is not a key fingerprint" in str(caught.value)
    assert "sk-live-123456" not in str(caught.value)


def test_unbounded_pattern_allowed_where_nothing_streams_or_with_max_length() -> None:
    parse_policy("rules: [{name: a, patterns: ['x+'], action: redact, stages: [request]}]\n")
    parse_policy("rules: [{name: a, patterns: ['x+'], action: flag}]\n")
    policy = parse_policy("rules: [{name: a, patterns: ['x+'], action: block, max_length: 40}]\n")
    assert policy.items[-2].response[0].max_length == 40


def test_routes_and_operations_narrow_the_plan() -> None:
    policy = parse_policy(
        "sampling: []\nphi: {enabled: false}\nrules:\n"
        "  - {name: ollama-only, keywords: [a], action: flag, scope: {routes: ['/api/*']}}\n"
        "  - {name: embeddings, keywords: [b], action: flag, scope: {operations: [embeddings]}}\n"
    )
    assert policy.plan("/v1/chat/completions", Operation.CHAT).empty
    assert [policy.items[i].name for i in policy.plan("/api/chat", Operation.CHAT).fixed] == ["ollama-only"]
    assert [policy.items[i].name for i in policy.plan("/v1/embeddings", Operation.EMBEDDINGS).fixed] == ["embeddings"]
    assert policy.plan("/v1/models", Operation.OTHER).empty


def test_load_policy_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(tmp_path / "bad.yaml")
