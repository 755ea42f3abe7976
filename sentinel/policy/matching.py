"""Finding what rules look for in text: `Detector`s (one per keyword/pattern rule, one per PHI form),
a `Scanner` that tests text against all of them in one RE2 pass and locates only those that hit,
and `Findings`, the counts a scan leaves behind (rule hits, PHI categories; never the matched text).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sentinel.policy import normalise
from sentinel.policy.engine import PatternSet, Regex
from sentinel.policy.model import Action
from sentinel.policy.normalise import View
from sentinel.policy.phi import Validator

PHI_RULE = "phi"
_SPACES = re.compile(" {2,}")


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
    keyword: bool = False
    """Matched against the keyword view (confusables folded; `sentinel.policy.normalise`), not the
    folded view that patterns and PHI forms see."""
    ascii_pattern: str | None = None
    """For keyword detectors: the same keywords over raw ASCII text (see `normalise.keyword_pattern_ascii`)."""
    ascii_regex: Regex | None = None
    edges: str | None = None
    """Checked after a match, since RE2 has no look-behind: `word` (keywords) rejects a match whose
    first or last character is an ASCII letter or digit and touches another one (`_` is no letter:
    `_nerve agent_` in Markdown italics is a match, `xnerve agent` is not); `digit` (PHI forms)
    rejects one whose edge digit touches another digit (`SSN:x219-55-0187x` is a match)."""
    spellings: tuple[tuple[tuple[str, ...], ...], ...] | None = None
    """For keyword detectors: per keyword, what each character of its view may read in text, so a
    stream holds back only a tail that could still grow into a keyword instead of `max_length`
    characters."""


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
    logprobs_stripped: bool = False
    """Log-probabilities were removed from the answer (they would repeat text a rule rewrites)."""

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


class Views:
    """One text and its two views, each built at most once (a scan and its hold share them)."""

    __slots__ = ("_folded", "_keyword", "plain", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.plain = text.isascii() and normalise.ASCII_UNSAFE not in text
        """ASCII without `|`: matched as it is, by each detector's ASCII pattern (one set pass)."""
        self._folded: View | None = None
        self._keyword: View | None = None

    @property
    def folded(self) -> View:
        if self._folded is None:
            self._folded = normalise.folded(self.text)
        return self._folded

    @property
    def keyword(self) -> View:
        if self._keyword is None:
            self._keyword = normalise.keyword(self.text)
        return self._keyword


def views(text: str | Views) -> Views:
    return text if isinstance(text, Views) else Views(text)


class Scanner:
    """All detectors of one stage for one set of rules, compiled into one RE2 set per view."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self.detectors = tuple(detectors)
        self._folded_index = [i for i, d in enumerate(self.detectors) if not d.keyword]
        self._keyword_index = [i for i, d in enumerate(self.detectors) if d.keyword]
        self._folded_set = PatternSet([self.detectors[i].pattern for i in self._folded_index])
        self._keyword_set = PatternSet([self.detectors[i].pattern for i in self._keyword_index])
        # ASCII text (the usual case) needs no views: every detector in one set over the text itself.
        self._ascii_set = PatternSet([d.ascii_pattern or d.pattern for d in self.detectors])
        self.rewrites = any(d.action != "flag" for d in self.detectors)
        self._merge, self._prefixes = _prefixes(self.detectors)
        held_by_prefix = [d for d in self.detectors if d.keyword and _single(d)]
        self._prefix_length = max((d.max_length for d in held_by_prefix), default=0)
        # +1: a pattern ending in \b needs to see the character after its match.
        self._fixed_hold = max((d.max_length + 1 for d in self.detectors if d not in held_by_prefix), default=0)

    def __bool__(self) -> bool:
        return bool(self.detectors)

    def triggered(self, text: str | Views) -> list[int]:
        """Indexes of the detectors whose pattern occurs somewhere in `text` (one pass per view)."""
        seen = views(text)
        if seen.plain:
            return self._ascii_set.hits(seen.text)
        found: list[int] = []
        if self._folded_index:
            found += [self._folded_index[i] for i in self._folded_set.hits(seen.folded.text)]
        if self._keyword_index:
            found += [self._keyword_index[i] for i in self._keyword_set.hits(seen.keyword.text)]
        return found

    def scan(self, text: str | Views, which: Sequence[int] | None = None, pos: int = 0) -> list[Hit]:
        """Every validated match, in text order, as spans of the original text. `pos` starts the
        search without hiding the text before it from `\\b` (streams pass the last emitted characters
        as context)."""
        seen = views(text)
        indexes = self.triggered(seen) if which is None else which
        hits: list[Hit] = []
        plain = seen.plain
        for index in indexes:
            detector = self.detectors[index]
            if plain:
                view = seen.folded  # the text itself
                regex = detector.ascii_regex or detector.regex
            else:
                view = seen.keyword if detector.keyword else seen.folded
                regex = detector.regex
            group, validator, edges = detector.group, detector.validator, detector.edges
            text = view.text
            at = view.position(pos) if pos else 0
            while at <= len(text):
                match = regex.search(text, at)
                if match is None:
                    break
                first, last = match.span()
                if edges is not None and not _edges_clear(text, first, last, edges == "digit"):
                    at = first + 1  # a match starting later may still be clear
                    continue
                at = last if last > first else last + 1
                start, end = match.span(group)
                if start < 0 or end <= start:
                    continue
                if validator is not None and not validator(view.text[start:end]):
                    continue
                begin, finish = view.span(start, end)
                hits.append(Hit(detector, begin, finish, view.original(match.span()[0])))
        if len(indexes) > 1:
            hits.sort(key=lambda hit: (hit.start, -hit.end))
        return hits

    def hold(self, text: str | Views) -> int:
        """Characters at the end of `text` a stream must keep until more text arrives: for keyword
        rules, the longest tail (of the keyword view) that is the start of a keyword; for patterns,
        their longest match (in the folded view)."""
        seen = views(text)
        length = len(seen.text)
        cut = length
        if self._fixed_hold:
            view = seen.folded
            cut = min(cut, view.cut(min(len(view.text), self._fixed_hold)) if view.text else length)
        if self._prefix_length > self._fixed_hold or (self._prefix_length and not seen.text.isascii()):
            # (On ASCII text both views keep positions, so a fixed hold at least as long covers it.)
            view = seen.keyword
            tail = view.text[-self._prefix_length :].translate(self._merge)
            for size in range(len(tail), 0, -1):
                candidate = tail[-size:]
                if "  " in candidate:  # a keyword's space matches a run of them
                    candidate = _SPACES.sub(" ", candidate)
                if candidate in self._prefixes:
                    cut = min(cut, view.cut(size))
                    break
        return length - cut


def _joined(left: str, right: str, digits: bool) -> bool:
    if digits:
        return left.isdigit() and right.isdigit() and left.isascii() and right.isascii()
    return left.isascii() and right.isascii() and left.isalnum() and right.isalnum()


def _edges_clear(text: str, first: int, last: int, digits: bool) -> bool:
    """The match [first, last) does not run on into a word (or a number) on either side."""
    if first > 0 and first < len(text) and _joined(text[first - 1], text[first], digits):
        return False
    return not (last > first and last < len(text) and _joined(text[last - 1], text[last], digits))


def _single(detector: Detector) -> bool:
    """Every character of every keyword reads as single characters (a hold by prefixes is exact)."""
    spellings = detector.spellings or ()
    return bool(spellings) and all(len(o) == 1 for word in spellings for found in word for o in found)


def _prefixes(detectors: Sequence[Detector]) -> tuple[dict[int, str], frozenset[str]]:
    """A translation merging the characters a keyword position may read as (`i`, `l`) into one, and
    every non-empty beginning of every keyword under it: a tail in that set may grow into a keyword."""
    parent: dict[str, str] = {}

    def find(char: str) -> str:
        while parent.get(char, char) != char:
            char = parent[char]
        return char

    keywords = [d for d in detectors if d.keyword and _single(d)]
    for detector in keywords:
        for word in detector.spellings or ():
            for found in word:
                for other in found[1:]:
                    a, b = find(found[0]), find(other)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    merge = {ord(char): find(char) for char in parent}
    prefixes = {
        "".join(found[0] for found in word).translate(merge)[:size]
        for detector in keywords
        for word in detector.spellings or ()
        for size in range(1, len(word) + 1)
    }
    return merge, frozenset(prefixes)


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


def offsets(parts: Sequence[str], separator: int) -> list[int]:
    """Where each part starts in the parts joined by `separator` characters."""
    out = []
    offset = 0
    for part in parts:
        out.append(offset)
        offset += len(part) + separator
    return out


def spanning(hits: Sequence[Hit], parts: Sequence[str], separator: int) -> list[Hit]:
    """The hits that cross from one part into another."""
    starts = offsets(parts, separator)
    ends = [start + len(part) for start, part in zip(starts, parts, strict=True)]
    return [hit for hit in hits if not any(s <= hit.start and hit.end <= e for s, e in zip(starts, ends, strict=True))]


def redact_parts(parts: Sequence[str], hits: Sequence[Hit], findings: Findings, separator: int = 1) -> list[str]:
    """`redact` over texts read as one, joined by `separator` characters (content parts joined by a
    line break): a match spanning parts is replaced in the first part it touches and its pieces are
    removed from the others. Counts every hit."""
    if len(parts) == 1:
        return [redact(parts[0], hits, findings)]
    offsets_ = offsets(parts, separator)
    cuts: list[list[tuple[int, int, str]]] = [[] for _ in parts]
    cursor = 0
    for hit in hits:
        findings.count(hit)
        if hit.detector.action != "redact" or hit.start < cursor:
            continue
        cursor = hit.end
        replacement: str | None = hit.detector.replacement
        for index, (start, part) in enumerate(zip(offsets_, parts, strict=True)):
            low, high = max(hit.start, start), min(hit.end, start + len(part))
            if low < high:
                cuts[index].append((low - start, high - start, replacement or ""))
                replacement = None
    out = []
    for part, mine in zip(parts, cuts, strict=True):
        pieces, at = [], 0
        for low, high, text in mine:
            pieces += [part[at:low], text]
            at = high
        out.append("".join(pieces) + part[at:] if mine else part)
    return out
