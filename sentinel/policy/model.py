"""The policy file's shape: what an operator writes in YAML, validated field by field.

    sampling:                       # omitted: temperature clamped to 0.1-0.9 for every call
      - name: temperature-bounds
        temperature: {min: 0.1, max: 0.9}          # clamp (default) or action: reject
        max_tokens: {max: 4096, action: reject}
    rules:
      - name: project-codenames
        keywords: [titan, bluebird]
        action: redact                              # block | redact | flag
        stages: [request, response]
        scope: {models: ["deepseek-*"], routes: ["/v1/*"]}
    phi: {request: flag, response: redact}

Errors name the rule and the field (`rules[2] 'project-codenames' -> patterns[0]: ...`); see
`sentinel.policy.loading`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sentinel.policy.phi import Category

Action = Literal["block", "redact", "flag"]
Stage = Literal["request", "response"]
OperationName = Literal["chat", "text_completion", "embeddings"]


_BOTH_STAGES: tuple[Stage, ...] = ("request", "response")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scope(_Strict):
    """Where a rule applies; every list given must match (an empty list matches everything).
    Model, user and route entries are shell-style globs (`deepseek-*`)."""

    models: list[str] = Field(default_factory=list, description="Requested model names.")
    api_keys: list[str] = Field(
        default_factory=list, description="Caller key fingerprints, `key-` + 12 hex (as in the record's caller)."
    )
    users: list[str] = Field(default_factory=list, description="Dify end-user ids (the request's `user` field).")
    routes: list[str] = Field(default_factory=list, description="Request paths, e.g. `/v1/chat/completions`, `/api/*`.")
    operations: list[OperationName] = Field(default_factory=list)

    @field_validator("api_keys")
    @classmethod
    def _fingerprints(cls, value: list[str]) -> list[str]:
        for index, key in enumerate(value):
            if not (key.startswith("key-") and len(key) == 16 and all(c in "0123456789abcdef" for c in key[4:])):
                # The value is not echoed: a mistaken entry may be the secret key itself.
                raise ValueError(
                    f"entry {index} is not a key fingerprint: use `key-` + 12 hex digits as shown in the "
                    "record's caller.api_key_id, never the key itself"
                )
        return value

    @property
    def unrestricted(self) -> bool:
        return not (self.models or self.api_keys or self.users or self.routes or self.operations)


class Bound(_Strict):
    """Allowed range of one sampling parameter."""

    min: float | None = None
    max: float | None = None
    action: Literal["clamp", "reject"] = "clamp"
    default: float | None = Field(
        default=None, description="Injected when the request omits the parameter; omitted: left unset."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.default is not None and not _within(self.default, self.min, self.max):
            raise ValueError(f"default {self.default} is outside min/max")
        return self


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


class SamplingRule(_Strict):
    name: str = Field(min_length=1, max_length=64)
    scope: Scope = Field(default_factory=Scope)
    temperature: Bound | None = None
    top_p: Bound | None = None
    max_tokens: Bound | None = Field(
        default=None, description="OpenAI max_tokens / max_completion_tokens, Ollama options.num_predict."
    )

    @model_validator(mode="after")
    def _something(self) -> SamplingRule:
        if self.temperature is None and self.top_p is None and self.max_tokens is None:
            raise ValueError("bounds none of temperature, top_p, max_tokens")
        return self


DEFAULT_SAMPLING = [SamplingRule(name="temperature-bounds", temperature=Bound(min=0.1, max=0.9))]
"""The seed article's response strategy: temperature kept within 0.1-0.9, clamped."""


class ContentRule(_Strict):
    """Keywords (literal text) and/or regular expressions (RE2 syntax), with what to do on a match."""

    name: str = Field(min_length=1, max_length=64)
    keywords: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    action: Action
    stages: list[Stage] = Field(default_factory=lambda: list(_BOTH_STAGES), min_length=1)
    case_sensitive: bool | None = Field(
        default=None, description="Default: keywords ignore case, patterns match as written."
    )
    whole_word: bool = Field(
        default=True, description="Keywords match only as whole words where they start/end with a letter or digit."
    )
    replacement: str = "[REDACTED]"
    message: str | None = Field(default=None, description="What a blocked caller is told.")
    max_length: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Longest text a pattern can match; required for unbounded patterns that redact or block "
        "streamed answers (it is how much text is held back).",
    )
    scope: Scope = Field(default_factory=Scope)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        for index, keyword in enumerate(value):
            if not keyword.strip():
                raise ValueError(f"keywords[{index}] is empty")
        return value

    @model_validator(mode="after")
    def _something(self) -> ContentRule:
        if not self.keywords and not self.patterns:
            raise ValueError("give keywords, patterns or both")
        return self


class PhiPolicy(_Strict):
    """PHI/PII detection. Findings are counted by category (never their values) in every record."""

    enabled: bool = True
    categories: list[Category] = Field(default_factory=lambda: list(Category))
    request: Action = "flag"
    response: Action = "flag"
    replacement: str = Field(default="[{category}]", description="`{category}` becomes e.g. SSN.")
    message: str | None = None
    scope: Scope = Field(default_factory=Scope)


class ModerationPolicy(_Strict):
    """Answers of the Dify moderation endpoint."""

    preset_response: str = Field(
        default="Your content violates our usage policy.",
        max_length=500,
        description="Returned with action direct_output when a block rule matches.",
    )


RESERVED_NAMES = ("phi", "unparseable", "unknown_route", "token_ids", "ambiguous_keys", "encoded_response")
"""Rule names Sentinel uses itself in records and metrics (PHI findings, requests refused unread)."""

METADATA_ROUTES = ["/api/show", "/api/tags", "/api/ps", "/api/version"]
"""Ollama routes that carry a model name, never a prompt: forwarded unjudged unless the file says otherwise."""


class PassThrough(_Strict):
    """Requests the policy forwards without judging them. Everything else it cannot read is refused."""

    routes: list[str] = Field(
        default_factory=lambda: list(METADATA_ROUTES),
        description="Path globs whose request bodies are forwarded as they are: on routes the policy does not "
        "understand (e.g. llama.cpp's /tokenize) and bodies it cannot parse. Listing a route switches the "
        "policy off for it: say so in the change's review.",
    )


class PolicyFile(_Strict):
    version: Literal[1] = 1
    pass_through: PassThrough = Field(default_factory=PassThrough)
    sampling: list[SamplingRule] = Field(default_factory=lambda: list(DEFAULT_SAMPLING))
    rules: list[ContentRule] = Field(default_factory=list)
    phi: PhiPolicy = Field(default_factory=PhiPolicy)
    moderation: ModerationPolicy = Field(default_factory=ModerationPolicy)

    @model_validator(mode="after")
    def _unique_names(self) -> PolicyFile:
        seen: set[str] = set()
        names = [rule.name for rule in self.sampling] + [rule.name for rule in self.rules]
        for name in names:
            if name in seen or name in RESERVED_NAMES:
                raise ValueError(f"rule name {name!r} is used twice (or is reserved: {', '.join(RESERVED_NAMES)})")
            seen.add(name)
        return self
