# ruff: noqa: RUF001  (look-alike characters are what these tests are about)
"""One normalisation for matching: invisible characters, confusables, full-width and mathematical
letters, digits of other scripts and unusual dashes do not get a keyword or an identifier past a rule,
whole or streamed in any split; and the text forwarded changes only where a rule redacts.

The confusables used to attack come from the `confusable-homoglyphs` table and the invisible
characters from Unicode's general category Cf and the Default_Ignorable_Code_Point list, so the
attack is not built from the code under test's own tables."""

from __future__ import annotations

import contextlib
import unicodedata

import pytest
from confusable_homoglyphs import confusables
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.interaction import Operation
from sentinel.policy import normalise
from sentinel.policy.compiled import Active
from sentinel.policy.loading import parse_policy
from sentinel.policy.matching import Findings, Views, redact
from sentinel.policy.streams import Blocked, TextStream

POLICY = """
sampling: []
rules:
  - name: codenames
    keywords: [bluebird, Project Titan]
    action: block
  - name: secrets
    keywords: [机密]
    action: redact
  - name: ticket
    patterns: ['TK-\\d{4}']
    action: redact
phi: {request: redact, response: redact, categories: [ssn, phone]}
"""

KEYWORDS = ["bluebird", "Project Titan", "BLUEBIRD", "project titan"]

IGNORABLES = [
    "\u00ad", "\u034f", "\u061c", "\u115f", "\u17b4", "\u180b", "\u180e", "\u200b", "\u200c", "\u200d",
    "\u200e", "\u200f", "\u202a", "\u202e", "\u2060", "\u2063", "\u2066", "\u3164", "\ufe00", "\ufe0f",
    "\ufeff", "\uffa0", "\U0001d173", "\U000e0001", "\U000e0041", "\U000e0100",
]  # fmt: skip
FORMAT_CHARACTERS = [chr(p) for p in range(0x80, 0x30000) if unicodedata.category(chr(p)) == "Cf"]


def active() -> Active:
    compiled = parse_policy(POLICY)
    return compiled.select(compiled.plan("/v1/chat/completions", Operation.CHAT), "m", None, lambda: None)


SCANNER = active().rewrite


def _glyphs(char: str) -> list[str]:
    """Single characters the library lists as confusable with `char` (either direction), and the
    full-width form."""
    found = [entry["c"] for entry in confusables.confusables_data.get(char, [])]
    found = [g for g in found if len(g) == 1 and not g.isspace() and unicodedata.category(g) not in ("Mn", "Me")]
    if "!" <= char <= "~":
        found.append(chr(ord(char) + 0xFEE0))
    if char.isascii() and char.isalpha():
        for name in _LETTER_SYMBOLS:
            with contextlib.suppress(KeyError):  # not every letter has a small capital
                found.append(unicodedata.lookup(f"{name} {char.upper()}"))
    return found


_LETTER_SYMBOLS = (
    "LATIN LETTER SMALL CAPITAL",
    "REGIONAL INDICATOR SYMBOL LETTER",
    "NEGATIVE SQUARED LATIN CAPITAL LETTER",
    "NEGATIVE CIRCLED LATIN CAPITAL LETTER",
)
DECORATING_MARKS = ["\u0332", "\u0336", "\u20e3", "\u20dd", "\u0301", "\u1ab0", "\u1dc0", "\ufe20"]


@st.composite
def disguised(draw: st.DrawFn) -> str:
    keyword = draw(st.sampled_from(KEYWORDS))
    out = []
    for char in keyword:
        options = [g for g in _glyphs(char) if normalise.keyword(g).text]
        if options and draw(st.booleans()):
            char = draw(st.sampled_from(options))
        out.append(char)
        if char == " ":
            out.append(draw(st.text(alphabet=" \t\n\u3000\u00a0", max_size=3)))  # a stretched space
        if draw(st.integers(0, 3)) == 0:
            out.append(draw(st.sampled_from(IGNORABLES + FORMAT_CHARACTERS)))
        if char != " " and draw(st.integers(0, 3)) == 0:
            out.append(draw(st.sampled_from(DECORATING_MARKS)))
    return "".join(out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(disguised(), st.sampled_from(["", "Status of ", "(", "说"]), st.sampled_from(["", "?", " now.", "。"]))
def test_a_disguised_keyword_is_still_found(word: str, before: str, after: str) -> None:
    hits = SCANNER.scan(before + word + after)
    assert [hit.detector.rule for hit in hits] == ["codenames"], (word, [hex(ord(c)) for c in word])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(disguised(), st.data())
def test_a_disguised_keyword_split_across_chunks_is_never_sent(word: str, data: st.DataObject) -> None:
    text = "The plan: " + word + " launches."
    cuts = sorted(data.draw(st.sets(st.integers(1, len(text) - 1), max_size=6)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    stream = TextStream(SCANNER, Findings())
    sent = ""
    with pytest.raises(Blocked):
        for piece in pieces:
            sent += stream.push(piece)
        sent += stream.flush()
    assert normalise.keyword(word).text not in normalise.keyword(sent).text
    assert not SCANNER.scan(sent)


def test_redaction_changes_only_the_match_in_the_original_text() -> None:
    text = (
        "ｅｍａｉｌ: 机\u200b密 ticket ＴＫ－４４１２ and 二一九 SSN ２１９‐５５‐０１８７ \u00e9t\u00e9 caf\u0065\u0301"
    )
    out = redact(text, SCANNER.scan(text), Findings())
    assert out == "ｅｍａｉｌ: [REDACTED] ticket [REDACTED] and 二一九 SSN [SSN] \u00e9t\u00e9 caf\u0065\u0301"


@pytest.mark.parametrize(
    "text",
    [
        "SSN ٢١٩-٥٥-٠١٨٧",  # Arabic-Indic digits
        "SSN ２１９－５５－０１８７",  # full-width
        "SSN 219\u201055\u20100187",  # U+2010 hyphen
        "SSN 219\u221255\u22120187",  # minus sign
        "SSN 2\u200b1\u200b9-55-0187",  # zero-width spaces between digits
        "SSN ２１９ ５５ ０１８７",  # ideographic spaces
        "SSN 𝟐𝟏𝟗-𝟓𝟓-𝟎𝟏𝟖𝟕",  # mathematical digits
        "SSN " + "".join(c + "\u0332" for c in "219-55-0187"),  # combining low line on every character
        "SSN " + "".join(c + "\u20e3" if c.isdigit() else c for c in "219-55-0187"),  # keycap digits
        "SSN ❷❶❾-❺❺-⓿❶❽❼",  # dingbat digits (No, not decimal)
    ],
)
def test_phi_in_other_digits_and_dashes_is_found(text: str) -> None:
    assert [hit.detector.category for hit in SCANNER.scan(text)] == ["ssn"]
    # (A mark after the last digit decorates nothing once the digits are gone, and stays.)
    assert redact(text, SCANNER.scan(text), Findings()).rstrip("\u0332\u20e3") == "SSN [SSN]"


def test_plain_text_and_near_misses_are_left_alone() -> None:
    for text in ["bluebirds sing", "blue bird", "Projects Titanic", "titanium", "一二三", "TK-12", "Ｔｉｔａｎ"]:
        assert SCANNER.scan(text) == [], text


def test_views_map_every_span_back() -> None:
    text = "a\u200bｂ\ufb01c\U0001d7d8x"  # removed, widened, ligature (1 -> 2), math digit
    view = normalise.folded(text)
    assert view.text == "abfic0x"
    assert [view.original(i) for i in range(len(view.text))] == [0, 2, 3, 3, 4, 5, 6]
    assert view.span(1, 4) == (2, 4) and view.span(0, 7) == (0, 7)
    assert [view.position(i) for i in range(len(text) + 1)] == [0, 1, 1, 2, 4, 5, 6, 7]


def test_the_view_of_a_concatenation_is_the_concatenation_of_views() -> None:
    parts = ["Ｐｒｏ", "\u200bject", " Ｔｉ", "ｔａｎ \ud800"]
    assert normalise.keyword("".join(parts)).text == "".join(normalise.keyword(p).text for p in parts)
    assert normalise.folded("".join(parts)).text == "".join(normalise.folded(p).text for p in parts)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["bluebird", "BLUEB1RD", "b|uebird", "Pr0ject TITAN", "project  titan", "TK-4412", "219-55-0187"]
        )
        | st.text(alphabet="bluerdIL10O|Tt -.:aijnpc\n\t", max_size=12),
        max_size=6,
    ).map(" ".join)
)
def test_ascii_fast_path_finds_what_the_views_find(text: str) -> None:
    fast = Views(text)
    slow = Views(text)
    slow.plain = False  # force matching through the folded and keyword views
    found = [(h.detector.rule, h.start, h.end) for h in SCANNER.scan(fast)]
    assert found == [(h.detector.rule, h.start, h.end) for h in SCANNER.scan(slow)]
    assert sorted(SCANNER.triggered(fast)) == sorted(SCANNER.triggered(slow))
