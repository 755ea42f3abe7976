"""`longest` against an independent oracle: Python's own regex parser (`re._parser`, private, used
here only as a reference and never by Sentinel) on the PHI forms and on generated patterns in the
syntax both engines share; and on RE2-only syntax Python cannot read."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.policy.engine import compile_pattern
from sentinel.policy.phi import FORMS
from sentinel.policy.width import longest

_ORACLE: Any = importlib.import_module("re._parser")


def oracle(pattern: str) -> int | None:
    high = int(_ORACLE.parse(pattern).getwidth()[1])
    return None if high >= 1 << 31 else high


@pytest.mark.parametrize("pattern", [form.pattern for form in FORMS])
def test_phi_forms_agree_with_python(pattern: str) -> None:
    assert longest(pattern) == oracle(pattern) is not None


@pytest.mark.parametrize(
    ("pattern", "width"),
    [
        (r"\p{Han}{2,4}", 4),
        (r"\pL\PN", 2),
        (r"\x{4e2d}\x41", 2),
        (r"\Qa.b*\E", 4),
        (r"[[:alpha:]][^]x]", 2),
        (r"(?i)ab(?P<n>c|de)\z", 4),
        (r"(?<n>x){3}", 3),
        (r"a{,3}", 5),  # RE2 reads `{,3}` as text
        (r"a\b*b", 2),
        (r"x+", None),
        (r"(?:ab){2,}", None),
    ],
)
def test_re2_syntax(pattern: str, width: int | None) -> None:
    compile_pattern(pattern)
    assert longest(pattern) == width


ATOMS = st.sampled_from(
    ["a", "\\d", "\\w", ".", "[a-z]", "[^0-9]", "\\b", "^", "$", "\\.", "é", "中", "\\x41", "[\\]x]", "\\s"]
)
QUANTIFIERS = st.sampled_from(["", "", "?", "*", "+", "{2}", "{1,3}", "{2,}", "??", "{0,4}?", "*?"])


@st.composite
def patterns(draw: st.DrawFn, depth: int = 0) -> str:
    branches = []
    for _ in range(draw(st.integers(1, 3))):
        parts = []
        for _ in range(draw(st.integers(1, 4))):
            if depth < 2 and draw(st.integers(0, 4)) == 0:
                opener = draw(st.sampled_from(["(", "(?:", "(?i:", f"(?P<g{draw(st.integers(0, 9))}>"]))
                atom = opener + draw(patterns(depth + 1)) + ")"
            else:
                atom = draw(ATOMS)
            parts.append(atom + draw(QUANTIFIERS))
        branches.append("".join(parts))
    return "|".join(branches)


@settings(max_examples=500, deadline=None)
@given(patterns())
def test_generated_patterns_agree_with_python(pattern: str) -> None:
    try:
        expected = oracle(pattern)
    except Exception:  # e.g. a group name used twice: not a pattern to compare
        return
    assert longest(pattern) == expected, pattern
