"""`Policy`: a validated policy file compiled for the request path.

Everything that can be decided ahead of time is: patterns are compiled once, rules are sorted into
per-route plans (cached by path) and each distinct set of applicable rules gets its scanners built
once and cached, so a call pays for one dict lookup, its scope checks and the scans it needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from typing import Any

from sentinel.interaction import Operation
from sentinel.policy import normalise
from sentinel.policy.engine import compile_pattern, escape
from sentinel.policy.matching import PHI_RULE, Detector, Scanner
from sentinel.policy.model import Action, ContentRule, PhiPolicy, PolicyFile, SamplingRule, Scope
from sentinel.policy.phi import FORMS, Category, Form
from sentinel.policy.scope import caller_matches, needs_request, route_admits, route_matches
from sentinel.policy.width import longest

_USUAL_ROUTES = (
    ("/v1/chat/completions", Operation.CHAT),
    ("/v1/completions", Operation.TEXT_COMPLETION),
    ("/v1/embeddings", Operation.EMBEDDINGS),
    ("/api/chat", Operation.CHAT),
    ("/api/generate", Operation.TEXT_COMPLETION),
    ("/api/embed", Operation.EMBEDDINGS),
)
_PLAN_CACHE = 512
_ACTIVE_CACHE = 256


class RuleError(ValueError):
    """A rule that cannot be compiled; `where` names it (`rules[2] 'codenames' -> patterns[0]`)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


def pattern_width(pattern: str) -> int | None:
    """The longest text `pattern` can match, or None if unbounded (or not read: then the rule must
    say max_length)."""
    try:
        return longest(pattern)
    except (IndexError, ValueError):
        return None


def _word(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "_")


def _bounded(pattern: str, first: str, last: str, whole_word: bool) -> str:
    """Keywords carry no `\\b`: RE2's counts `_` as a letter, so `_nerve agent_` would pass. Whole
    words are checked after the match instead (`Detector.edges`), on edges that are letters or
    digits, so whole-word matching still finds keywords in Chinese or next to punctuation."""
    return pattern


def literal_pattern(keyword: str, whole_word: bool) -> str:
    """A case-sensitive keyword over the folded view (whole words: `Detector.edges`)."""
    text = normalise.folded(keyword).text
    return _bounded(escape(text), text[0], text[-1], whole_word)


def keyword_detector(rule: ContentRule) -> Detector:
    """Case-insensitive keywords, matched on the keyword view: confusables, case, width, marks and
    invisible characters make no difference (docs/policy.md, "Normalisation")."""
    alternatives: list[str] = []
    ascii_alternatives: list[str] = []
    spellings: list[tuple[tuple[str, ...], ...]] = []
    widths: list[int] = []
    for keyword in rule.keywords:
        pieces = normalise.keyword_pattern(keyword)
        folded = normalise.folded(keyword).text
        if not pieces or not folded:
            continue
        alternatives.append(_bounded("".join(pieces), folded[0], folded[-1], rule.whole_word))
        ascii_pieces = "".join(normalise.keyword_pattern_ascii(keyword))
        ascii_alternatives.append(_bounded(ascii_pieces, folded[0], folded[-1], rule.whole_word))
        options = normalise.keyword_options(keyword)
        spellings.append(tuple(tuple(found) for found in options))
        spaces = sum(found == [" "] for found in options)
        widths.append(len(pieces) + (normalise.SPACE_RUN - 1) * spaces)
    pattern = "|".join(alternatives)
    ascii_pattern = "|".join(ascii_alternatives)
    return Detector(
        rule=rule.name,
        action=rule.action,
        pattern=pattern,
        regex=compile_pattern(pattern),
        max_length=max(widths),
        replacement=rule.replacement,
        message=rule.message,
        keyword=True,
        edges="word" if rule.whole_word else None,
        spellings=tuple(spellings),
        ascii_pattern=ascii_pattern,
        ascii_regex=compile_pattern(ascii_pattern),
    )


def content_detectors(rule: ContentRule, where: str) -> list[Detector]:
    detectors: list[Detector] = []
    if rule.keywords and rule.case_sensitive is not True:
        detectors.append(keyword_detector(rule))
    alternatives: list[str] = []
    widths: list[int] = []
    if rule.keywords and rule.case_sensitive is True:
        literal = "|".join(literal_pattern(k, rule.whole_word) for k in rule.keywords)
        detectors.append(
            Detector(
                rule=rule.name,
                action=rule.action,
                pattern=literal,
                regex=compile_pattern(literal),
                max_length=max(len(normalise.folded(k).text) for k in rule.keywords),
                replacement=rule.replacement,
                message=rule.message,
                edges="word" if rule.whole_word else None,
            )
        )
    for index, pattern in enumerate(rule.patterns):
        try:
            compile_pattern(pattern)
        except ValueError as exc:
            raise RuleError(f"{where} -> patterns[{index}]", f"not a valid RE2 pattern: {exc}") from None
        width = pattern_width(pattern)
        if width is None:
            rewrites_stream = "response" in rule.stages and rule.action != "flag"
            if rule.max_length is None and rewrites_stream:
                raise RuleError(
                    f"{where} -> patterns[{index}]",
                    "unbounded pattern (* or + or {n,}): a streamed answer can only be redacted or blocked by "
                    "bounded patterns; bound the repetition (e.g. {1,40}) or set max_length",
                )
            width = rule.max_length or 4096
        widths.append(width)
        alternatives.append(f"(?i:{pattern})" if rule.case_sensitive is False else f"(?:{pattern})")
    if alternatives:
        combined = "|".join(alternatives)
        detectors.append(
            Detector(
                rule=rule.name,
                action=rule.action,
                pattern=combined,
                regex=compile_pattern(combined),
                max_length=min(rule.max_length or max(widths), max(widths)),
                replacement=rule.replacement,
                message=rule.message,
            )
        )
    return detectors


@cache
def _form_regex(form: Form) -> tuple[Any, int]:
    pattern = _form_pattern(form)
    width = pattern_width(pattern)
    assert width is not None, form.pattern  # every PHI form is bounded by construction
    return compile_pattern(pattern), width


_LEADING_B = re.compile(r"\\b(?=\\d|\(\\d|\(\?:\\d|\[1-9\]|\(\?:9\\d)")
_TRAILING_B = re.compile(r"(\\d(?:\{\d+(?:,\d+)?\})?\)?(?:\{\d+(?:,\d+)?\})?)\\b")


_DIGIT_EDGED = frozenset(
    (Category.SSN, Category.PHONE, Category.DATE, Category.AGE_OVER_89, Category.ACCOUNT_NUMBER, Category.IP_ADDRESS)
)
"""Forms of numbers, which a letter or `_` may touch; identifiers mixing letters and digits (MBI,
VIN, licence numbers) keep their word boundaries."""


def _form_pattern(form: Form) -> str:
    return digit_edges(form.pattern) if form.category in _DIGIT_EDGED else form.pattern


def digit_edges(pattern: str) -> str:
    """A PHI form without the `\\b` that touch a digit: RE2's `\\b` counts letters and `_` as word
    characters, so `SSN _219-55-0187_` and `SSN:x219-55-0187x` passed. The detector checks instead
    that no digit touches the match (`Detector.edges`)."""
    return _TRAILING_B.sub(r"\1", _LEADING_B.sub("", pattern))


def phi_detectors(phi: PhiPolicy, action: Action) -> list[Detector]:
    if not phi.enabled:
        return []
    wanted = set(phi.categories)
    detectors = []
    for form in FORMS:
        if form.category not in wanted:
            continue
        regex, width = _form_regex(form)
        detectors.append(
            Detector(
                rule=PHI_RULE,
                action=action,
                pattern=_form_pattern(form),
                regex=regex,
                max_length=width,
                replacement=phi.replacement.replace("{category}", form.category.value.upper()),
                message=phi.message,
                category=form.category.value,
                validator=form.validator,
                group=form.group,
                edges="digit" if form.category in _DIGIT_EDGED else None,
            )
        )
    return detectors


@dataclass(frozen=True, slots=True, eq=False)
class Item:
    """One selectable unit of the policy: a sampling rule, a content rule, or the PHI detectors."""

    name: str
    scope: Scope
    sampling: SamplingRule | None = None
    request: tuple[Detector, ...] = ()
    response: tuple[Detector, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Active:
    """What applies to one call."""

    sampling: tuple[SamplingRule, ...]
    request: Scanner
    rewrite: Scanner
    """Response detectors that change the answer (redact, block): a stream is rewritten for them."""
    observe: Scanner
    """Response detectors that only flag: the answer passes untouched and is scanned at its end."""

    @property
    def empty(self) -> bool:
        return not (self.sampling or self.request or self.rewrite or self.observe)


@dataclass(frozen=True, slots=True, eq=False)
class RoutePlan:
    """The items whose route and operation scope admit one path; `fixed` apply to every caller."""

    fixed: tuple[int, ...]
    conditional: tuple[int, ...]
    generates: bool
    """chat or text completion: sampling bounds and response rules apply (not to embeddings)."""
    unknown: bool = False
    """A route the policy cannot read (not chat, completion or embeddings) that rules would cover:
    requests with a body are refused there unless the route is listed under `pass_through`."""
    pass_through: bool = False
    admitted: tuple[int, ...] = ()
    """On an unknown route: every item whose `routes` admit the path, whatever its `operations` (a
    route the policy cannot read may be a chat in another shape, llama.cpp's /v1/messages); their
    response rules apply to what comes back."""

    @property
    def empty(self) -> bool:
        return not self.fixed and not self.conditional


class Policy:
    """A compiled policy file; immutable, swapped whole on reload."""

    def __init__(self, source: PolicyFile, text: str = "", digest: str = "") -> None:
        self.source = source
        self.text = text
        self.digest = digest
        self.preset_response = source.moderation.preset_response
        items: list[Item] = [Item(rule.name, rule.scope, sampling=rule) for rule in source.sampling]
        for index, rule in enumerate(source.rules):
            detectors = tuple(content_detectors(rule, f"rules[{index}] {rule.name!r}"))
            items.append(
                Item(
                    rule.name,
                    rule.scope,
                    request=detectors if "request" in rule.stages else (),
                    response=detectors if "response" in rule.stages else (),
                )
            )
        if source.phi.enabled:
            items.append(
                Item(
                    PHI_RULE,
                    source.phi.scope,
                    request=tuple(phi_detectors(source.phi, source.phi.request)),
                    response=tuple(phi_detectors(source.phi, source.phi.response)),
                )
            )
        self.items = tuple(items)
        self._plans: dict[tuple[str, Operation], RoutePlan] = {}
        self._active: dict[tuple[tuple[int, ...], bool], Active] = {}
        # The Dify moderation endpoint knows no model, caller or route: only unscoped rules apply there.
        unscoped = [item for item in self.items if item.scope.unrestricted]
        self.moderation_input = Scanner([d for item in unscoped for d in item.request])
        self.moderation_output = Scanner([d for item in unscoped for d in item.response])
        # Compile the scanners of the usual routes now (a set takes milliseconds), off the request path:
        # this runs at start or on the reload thread, before the policy takes effect.
        for path, operation in _USUAL_ROUTES:
            plan = self.plan(path, operation)
            self.active(plan.fixed, plan.generates)

    def plan(self, path: str, operation: Operation) -> RoutePlan:
        key = (path, operation)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()  # arbitrary paths must not grow this without bound
            fixed: list[int] = []
            conditional: list[int] = []
            generates = operation in (Operation.CHAT, Operation.TEXT_COMPLETION)
            admitted: tuple[int, ...] = ()
            if operation is not Operation.OTHER:
                for index, item in enumerate(self.items):
                    if item.sampling is not None and not generates:
                        continue
                    if route_matches(item.scope, path, operation):
                        (conditional if needs_request(item.scope) else fixed).append(index)
            else:
                # Even rules limited to named operations: this route may be one of them in another
                # shape (llama.cpp's Anthropic-style /v1/messages is a chat).
                admitted = tuple(i for i, item in enumerate(self.items) if route_admits(item.scope, path))
            passes = any(fnmatchcase(path, glob) for glob in self.source.pass_through.routes)
            plan = self._plans[key] = RoutePlan(
                tuple(fixed), tuple(conditional), generates, bool(admitted), passes, admitted
            )
        return plan

    def select(self, plan: RoutePlan, model: str | None, user: str | None, key_id: Any) -> Active:
        chosen = plan.fixed
        if plan.conditional:
            extra = tuple(i for i in plan.conditional if caller_matches(self.items[i].scope, model, user, key_id))
            if extra:
                chosen = tuple(sorted(chosen + extra))
        return self.active(chosen, plan.generates)

    def active(self, chosen: tuple[int, ...], generates: bool) -> Active:
        key = (chosen, generates)
        active = self._active.get(key)
        if active is None:
            if len(self._active) >= _ACTIVE_CACHE:
                self._active.clear()
            items = [self.items[i] for i in chosen]
            response = [d for item in items for d in item.response] if generates else []
            active = self._active[key] = Active(
                sampling=tuple(item.sampling for item in items if item.sampling is not None) if generates else (),
                request=Scanner([d for item in items for d in item.request]),
                rewrite=Scanner([d for d in response if d.action != "flag"]),
                observe=Scanner([d for d in response if d.action == "flag"]),
            )
        return active

    def counts(self) -> dict[str, int]:
        return {
            "sampling": len(self.source.sampling),
            "content": len(self.source.rules),
            "phi_forms": sum(len(item.request or item.response) for item in self.items if item.name == PHI_RULE),
        }
