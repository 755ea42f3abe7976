"""One normalisation for matching: the text rules see, with a map back to the text that is forwarded.

A caller who wants a keyword or an identifier through writes it so that it still reads the same to
the model but no longer matches: zero-width and other format characters inside it, full-width or
mathematical letters, digits of another script, unusual dashes, look-alike letters from another
script. Rules therefore match a *view* of the text, never the text itself:

- the **folded** view (patterns and PHI forms): each character's NFKC form, with default-ignorable
  and format characters (Cf) removed, decimal digits of every script as ASCII digits, every dash as
  `-`, every space as ` `, lone surrogates as U+FFFD;
- the **keyword** view (case-insensitive keyword rules): the folded view without combining marks,
  each character replaced by one representative of its class of confusables (Unicode UTS #39
  confusables.txt, as shipped by `confusable-homoglyphs`, joined with upper/lower case pairs), so
  `bluebird` written with a Cyrillic e and i (U+0435, U+0456) reads `bluebird`.

The view is built character by character, so a view of `a + b` is the view of `a` plus the view of
`b` (streams rely on it), and `View.span` maps a match back to the characters to redact: the text
forwarded is never changed except where a rule redacts. A view is one `str.translate` (none for the
folded view of ASCII text); the map back is worked out only for text in which something matched.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from confusable_homoglyphs import confusables

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties) beyond the format characters (Cf):
# Hangul fillers, the combining grapheme joiner, variation selectors, Khmer inherent vowels, tags.
_IGNORABLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_SKIPPED_CATEGORIES = ("Cn", "Co")  # unassigned and private use: no normalisation defined
_LINE_SPACES = "\t\n\r\x0b\x0c"
"""Read as a space in the keyword view: `Project\nTitan` is the keyword `Project Titan`."""


def ignorable(char: str) -> bool:
    point = ord(char)
    return unicodedata.category(char) == "Cf" or any(low <= point <= high for low, high in _IGNORABLE_RANGES)


_DECORATING_MARKS = (
    (0x0300, 0x036F),  # combining diacritical marks (U+0332 low line under a digit)
    (0x1AB0, 0x1AFF),
    (0x1DC0, 0x1DFF),
    (0x20D0, 0x20FF),  # combining marks for symbols: the keycap U+20E3, enclosing circles
    (0xFE20, 0xFE2F),
)
"""Marks that decorate any character rather than spell a script's vowels: dropped in every view, so
`2̲1̲9̲` and the keycap `2⃣` read as digits."""

_LETTER_LIKE = re.compile(
    r"(?:LATIN LETTER SMALL CAPITAL|REGIONAL INDICATOR SYMBOL LETTER|NEGATIVE SQUARED LATIN CAPITAL LETTER"
    r"|NEGATIVE CIRCLED LATIN CAPITAL LETTER|SQUARED LATIN CAPITAL LETTER|CIRCLED LATIN CAPITAL LETTER"
    r"|PARENTHESIZED LATIN SMALL LETTER|CIRCLED LATIN SMALL LETTER) ([A-Z])"
)
"""Symbols that read as a Latin letter and that NFKC and confusables.txt leave alone (`ɴᴇʀᴠᴇ`,
`🅽🅴🆁🆅🅴`, `🇳🇪🇷🇻🇪`): the keyword view reads them as that letter."""


def _decorating(char: str) -> bool:
    point = ord(char)
    return any(low <= point <= high for low, high in _DECORATING_MARKS)


def _letter_like(char: str) -> str | None:
    match = _LETTER_LIKE.fullmatch(unicodedata.name(char, ""))
    return match.group(1).lower() if match else None


def _fold_char(char: str) -> str:
    category = unicodedata.category(char)
    if category == "Cs":
        return "\ufffd"  # a lone surrogate: RE2 reads UTF-8, which cannot carry one
    if ignorable(char) or _decorating(char):
        return ""
    digit = unicodedata.decimal(char, None)
    if digit is None and category == "No":
        digit = unicodedata.digit(char, None)  # dingbat digits: ❷, ⓿
    if digit is not None:
        return str(digit)
    out = []
    for part in unicodedata.normalize("NFKC", char):
        kind = unicodedata.category(part)
        if ignorable(part):
            continue
        if kind == "Pd" or part == "\u2212":
            out.append("-")
        elif part.isspace():
            out.append(" " if part not in "\t\n\r\x0b\x0c" else part)
        else:
            digit = unicodedata.decimal(part, None)
            out.append(str(digit) if digit is not None else part)
    return "".join(out)


def _strip_marks(text: str) -> str:
    return "".join(
        part for part in unicodedata.normalize("NFD", text) if unicodedata.category(part) not in ("Mn", "Me")
    )


@dataclass(frozen=True, slots=True)
class Table:
    """A per-character mapping (only characters that change), and the same for `str.translate`."""

    mapping: dict[str, str]
    trans: dict[int, str]


def _table(mapping: dict[str, str]) -> Table:
    return Table(mapping, {ord(char): new for char, new in mapping.items()})


@cache
def _assigned() -> tuple[str, ...]:
    """Every non-ASCII code point with a normalisation defined (Cs included: it maps to U+FFFD)."""
    category = unicodedata.category
    return tuple(c for c in map(chr, range(0x80, 0x110000)) if category(c) not in _SKIPPED_CATEGORIES)


@dataclass(frozen=True, slots=True)
class Tables:
    fold: Table
    keyword: Table
    """Folded, then combining marks removed: the length-changing half of the keyword view."""
    classes: dict[int, str]
    """The one-to-one half of the keyword view (`str.translate`): each character to its class's
    representative."""
    keyword_trans: dict[int, str]
    """Both halves at once, for one `str.translate` over non-ASCII text."""


@cache
def tables() -> Tables:
    """Built once per process (~0.5 s, every assigned code point), on the policy's load, not per call."""
    fold: dict[str, str] = {}
    keyword: dict[str, str] = {}
    prototypes = _prototypes()
    for char in _assigned():
        folded = _fold_char(char)
        if folded != char:
            fold[char] = folded
        # A confusable is replaced by its prototype before folding, as UTS #39's skeleton does:
        # NFKC would turn the ogonek (U+02DB, read `i`) into a space and a combining mark.
        source = prototypes.get(char)
        letter = _letter_like(char)
        stripped = letter or _strip_marks(_fold_char(source) if source is not None else folded)
        if stripped != char:
            keyword[char] = stripped
    classes = _classes(lambda c: _strip_marks(_fold_char(c)))
    combined = dict(classes)
    combined.update({ord(char): new.translate(classes) for char, new in keyword.items()})
    return Tables(_table(fold), _table(keyword), classes, combined)


def _classes(key: Callable[[str], str]) -> dict[int, str]:
    """Each character to P(lower(P(c))), P its confusables prototype: Cyrillic I (U+0406), iota
    (U+0269) and dotless i (U+0131) read `i`; case drops out. An upper-case letter whose prototype is another
    letter (`I` reads `l`) is what `keyword_pattern` allows for, per keyword character."""
    prototypes: dict[str, str] = {}
    for source, target in _prototypes().items():
        folded_source, folded_target = key(source), key(target)
        if len(folded_source) != 1 or len(folded_target) != 1 or folded_source == folded_target:
            continue
        if folded_source.isascii() and source not in _ASCII_PROTOTYPES:
            continue  # e.g. `ţ`, read `t` once its cedilla is gone: `t` itself stays `t`
        prototypes.setdefault(folded_source, folded_target)

    def proto(char: str) -> str:
        return prototypes.get(char, char)

    def lower(char: str) -> str:
        low = char.lower()
        return low if len(low) == 1 else char

    classes: dict[int, str] = {}
    for char in (*map(chr, range(0x80)), *_assigned()):
        rep = " " if char in _LINE_SPACES else proto(lower(proto(char)))
        if rep != char:
            classes[ord(char)] = rep
    return classes


_ASCII_PROTOTYPES = {"0": "O", "1": "l", "I": "l", "|": "l"}
"""confusables.txt lines between ASCII characters that matter to keywords (the digits and the
vertical line read as letters)."""


def _prototypes() -> dict[str, str]:
    """Each confusable character to its prototype. The library ships confusables.txt as a symmetric
    table, so the direction is taken back from the data: of two confusable characters the prototype is
    an ASCII letter or digit if either is one, else ASCII, else the one confusable with more characters.
    ASCII characters map only as `_ASCII_PROTOTYPES` says."""
    data = confusables.confusables_data

    def glyphs(char: str) -> list[str]:
        found = ("".join(c for c in entry["c"] if not ignorable(c)) for entry in data.get(char, ()))
        return [glyph for glyph in found if len(glyph) == 1 and not glyph.isspace()]

    def rank(char: str) -> tuple[bool, bool, int, str]:
        return (not (char.isascii() and char.isalnum()), not char.isascii(), -len(data.get(char, ())), char)

    prototypes = dict(_ASCII_PROTOTYPES)
    for source in data:
        if len(source) != 1 or source.isascii() or source.isspace():
            continue
        best = min(glyphs(source), key=rank, default=source)
        if rank(best) < rank(source):
            prototypes[source] = prototypes.get(best, best)
    return prototypes


class View:
    """`text` as rules see it; `span` maps a span of it back to the original's characters. The map is
    worked out only when asked for (a hit, a stream's hold-back): most text is scanned and let go."""

    __slots__ = ("_anchors", "_source", "_table", "text")

    def __init__(self, text: str, source: str | None = None, table: Table | None = None) -> None:
        self.text = text
        self._source = source
        self._table = table
        self._anchors: tuple[list[int], list[int], list[int]] | None = None

    def _map(self) -> tuple[list[int], list[int], list[int]]:
        """For each changed original character, in order: where its replacement starts and ends in the
        view, and where it is in the original. Between them the view copies the original."""
        if self._anchors is None:
            self._anchors = _anchors(self._source, self._table)
        return self._anchors

    def original(self, index: int) -> int:
        """The original character the view's character `index` comes from."""
        if self._table is None:
            return index
        starts, ends, origins = self._map()
        k = bisect_right(starts, index) - 1
        if k < 0:
            return index
        if index < ends[k]:
            return origins[k]
        return origins[k] + 1 + index - ends[k]

    def span(self, start: int, end: int) -> tuple[int, int]:
        if self._table is None:
            return start, end
        return self.original(start), self.original(end - 1) + 1

    def position(self, original: int) -> int:
        """Where the original index `original` falls in the view."""
        if self._table is None:
            return original
        _, ends, origins = self._map()
        k = bisect_right(origins, original - 1) - 1
        if k < 0:
            return original
        return ends[k] + original - origins[k] - 1

    def cut(self, held: int) -> int:
        """The original index where the view's last `held` characters begin (for stream hold-back)."""
        if held <= 0:
            return -1
        return self.original(len(self.text) - held)


def _anchors(text: str | None, table: Table | None) -> tuple[list[int], list[int], list[int]]:
    starts: list[int] = []
    ends: list[int] = []
    origins: list[int] = []
    if text is None or table is None:
        return starts, ends, origins
    lookup = table.mapping.get
    shift = 0  # view length minus original length so far
    for index, char in enumerate(text):
        new = lookup(char)
        if new is not None:
            starts.append(index + shift)
            shift += len(new) - 1
            origins.append(index)
            ends.append(index + 1 + shift)
    return starts, ends, origins


def _build(text: str, table: Table) -> View:
    translated = text.translate(table.trans)
    if translated == text:
        return View(text)
    return View(translated, text, table)


def folded(text: str) -> View:
    if text.isascii():
        return View(text)
    return _build(text, tables().fold)


def keyword(text: str) -> View:
    t = tables()
    if text.isascii():
        return View(text.translate(t.classes))
    translated = text.translate(t.keyword_trans)
    return View(translated, text, t.keyword)  # positions shift only where `t.keyword` changes length


def keyword_options(keyword_text: str) -> list[list[str]]:
    """What each character of a keyword's view may read in text: itself and the view of its upper-case
    and title-case forms (`i` also `l`, the view of `I`)."""
    t = tables()
    base = _build(keyword_text, t.keyword).text
    options: list[list[str]] = []
    for char in base:
        found = {char.translate(t.classes)}
        for variant in (char.upper(), char.title()):
            if len(variant) == 1:
                found.add(_build(variant, t.keyword).text.translate(t.classes))
        found.discard("")
        options.append(sorted(found, key=lambda o: (len(o), o)))
    return options


def keyword_pattern(keyword_text: str) -> list[str]:
    """A keyword as RE2 pieces over the keyword view, one per character of its view."""
    parts = []
    for found in keyword_options(keyword_text):
        single = [o for o in found if len(o) == 1]
        longer = [o for o in found if len(o) > 1]
        alternatives = []
        if single:
            alternatives.append(
                _escape(single[0]) if len(single) == 1 else "[" + "".join(_class_char(o) for o in single) + "]"
            )
        alternatives += [_escape(o) for o in longer]
        parts.append(
            _spaced(alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")", found)
        )
    return parts


SPACE_RUN = 8
"""A space in a keyword matches a run of up to this many spaces (tabs, line breaks) in text."""


def _spaced(piece: str, found: list[str]) -> str:
    return f"(?:{piece}){{1,{SPACE_RUN}}}" if found == [" "] else piece


ASCII_UNSAFE = "|"
"""The one ASCII character whose keyword view (`l`) is a word character while it is not: `\\b` would
differ, so text holding it is matched through the view, not by the ASCII patterns."""


@cache
def _ascii_preimages() -> dict[str, str]:
    """Each keyword-view character to the ASCII characters that read as it (`l`: `1IL|l`)."""
    found: dict[str, str] = {}
    for char in (*_LINE_SPACES, *map(chr, range(0x20, 0x7F))):
        if char != ASCII_UNSAFE:
            view = keyword(char).text
            found[view] = found.get(view, "") + char
    return found


def keyword_pattern_ascii(keyword_text: str) -> list[str]:
    """The same keyword as RE2 pieces over raw ASCII text (without `|`): each view character becomes
    the class of ASCII characters that read as it, so ASCII text needs no view and one set pass."""
    preimages = _ascii_preimages()
    parts = []
    for found in keyword_options(keyword_text):
        alternatives = []
        for option in found:
            classes: list[str] = []
            for char in option:
                members = preimages.get(char, "")
                if not members:
                    classes = []
                    break
                classes.append(members[0] if len(members) == 1 else "[" + "".join(map(_class_char, members)) + "]")
            if classes:
                alternatives.append("".join(_class_char(c) if len(c) == 1 else c for c in classes))
        if not alternatives:
            alternatives.append("[^\\x00-\\x{10ffff}]")  # reads as no ASCII: never matches ASCII text
        parts.append(
            _spaced(alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")", found)
        )
    return parts


def _escape(text: str) -> str:
    return "".join(_class_char(char) for char in text)


def _class_char(char: str) -> str:
    return f"\\x{{{ord(char):x}}}" if not char.isalnum() else char
