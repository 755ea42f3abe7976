"""Finding what rules look for in text: `Detector`s (one per keyword/pattern rule, one per PHI form),
a `Scanner` that tests text against all of them in one RE2 pass and locates only those that hit,
and `Findings`, the counts a scan leaves behind (rule hits, PHI categories; never the matched text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sentinel.policy.engine import PatternSet, Regex
from sentinel.policy.model import Action
from sentinel.policy.phi import Validator

PHI_RULE = "phi"


@dataclass(frozen=True, slots=True, eq=False)
class Detector:
    """One thing to look for. `rule` names it in annotations and metrics (`phi` for PHI forms)."""

    rule: str
    action: Action
    pattern: str
    regex: Regex
    max_length: int
    """Longest text a match can span: how much of a stream must be held back to see it whole."""
    replacement: str = "[REDACTED]"
    message: str | None = None
    category: str | None = None
    validator: Validator | None = None
    group: int = 0
    prefixes: frozenset[str] | None = None
    """For keyword-only rules: every case-folded prefix of every keyword, so a stream holds back only a
    tail that could still grow into a keyword instead of `max_length` characters."""


@dataclass(slots=True)
class Hit:
    detector: Detector
    start: int
    """Span of the value to replace (a context word such as "MRN:" before it is kept)."""
    end: int
    match_start: int
    """Where the whole match starts, context included."""


@dataclass(slots=True)
class Findings:
    """What scanning found: hits by (rule, action), PHI findings by category, and the first block."""

    rules: dict[tuple[str, str], int] = field(default_factory=dict)
    phi: dict[str, int] = field(default_factory=dict)
    block: Detector | None = None

    def count(self, hit: Hit) -> None:
        detector = hit.detector
        key = (detector.rule, detector.action)
        self.rules[key] = self.rules.get(key, 0) + 1
        if detector.category is not None:
            self.phi[detector.category] = self.phi.get(detector.category, 0) + 1
        if detector.action == "block" and self.block is None:
            self.block = detector

    def count_block(self, detector: Detector) -> None:
        key = (detector.rule, "block")
        self.rules[key] = self.rules.get(key, 0) + 1
        if detector.category is not None:
            self.phi[detector.category] = self.phi.get(detector.category, 0) + 1
        if self.block is None:
            self.block = detector

    def __bool__(self) -> bool:
        return bool(self.rules)


class Scanner:
    """All detectors of one stage for one set of rules, compiled into a single RE2 set."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self.detectors = tuple(detectors)
        self._set = PatternSet([d.pattern for d in self.detectors])
        self.rewrites = any(d.action != "flag" for d in self.detectors)
        keyword_only = [d for d in self.detectors if d.prefixes is not None]
        self._prefixes: frozenset[str] = frozenset().union(*(d.prefixes or () for d in keyword_only))
        self._prefix_length = max((d.max_length for d in keyword_only), default=0)
        # +1: a pattern ending in \b needs to see the character after its match.
        self._fixed_hold = max((d.max_length + 1 for d in self.detectors if d.prefixes is None), default=0)

    def __bool__(self) -> bool:
        return bool(self.detectors)

    def triggered(self, text: str) -> list[int]:
        """Indexes of the detectors whose pattern occurs somewhere in `text` (one pass)."""
        return self._set.hits(text)

    def scan(self, text: str, which: Sequence[int] | None = None, pos: int = 0) -> list[Hit]:
        """Every validated match, in text order. `pos` starts the search without hiding the text
        before it from `\\b` (streams pass the last emitted characters as context)."""
        indexes = self.triggered(text) if which is None else which
        hits: list[Hit] = []
        for index in indexes:
            detector = self.detectors[index]
            group, validator = detector.group, detector.validator
            for match in detector.regex.finditer(text, pos):
                start, end = match.span(group)
                if start < 0 or end <= start:
                    continue
                if validator is not None and not validator(text[start:end]):
                    continue
                hits.append(Hit(detector, start, end, match.span()[0]))
        if len(indexes) > 1:
            hits.sort(key=lambda hit: (hit.start, -hit.end))
        return hits

    def hold(self, text: str) -> int:
        """Characters at the end of `text` a stream must keep until more text arrives: for keyword
        rules, the longest tail that is the start of a keyword; for patterns, their longest match."""
        hold = min(len(text), self._fixed_hold)
        if self._prefix_length > hold:
            tail = text[-self._prefix_length :].casefold()
            for size in range(len(tail), hold, -1):
                if tail[-size:] in self._prefixes:
                    return size
        return hold


def redact(text: str, hits: Sequence[Hit], findings: Findings) -> str:
    """`text` with every redact hit replaced (overlaps: the earlier, then longer, wins); counts every hit."""
    parts: list[str] = []
    cursor = 0
    for hit in hits:
        findings.count(hit)
        if hit.detector.action != "redact" or hit.start < cursor:
            continue
        parts.append(text[cursor : hit.start])
        parts.append(hit.detector.replacement)
        cursor = hit.end
    if not parts:
        return text
    parts.append(text[cursor:])
    return "".join(parts)
