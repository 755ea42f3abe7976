"""The longest text a regular expression (RE2 syntax) can match, in characters, or None if unbounded.

RE2 does not say, and a stream must hold back that many characters to see a match whole. This reads
the pattern's structure: literals, escapes and classes are one character, assertions none, groups
and alternations combine, quantifiers multiply (`*`, `+` and `{n,}` make it unbounded). Call it only
on patterns RE2 has compiled: it does not validate.

>>> longest(r"LC-\\d{4}-[A-Z]{2}")
10
>>> longest(r"(?i:ab|c)+") is None
True
"""

from __future__ import annotations

import re

_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")
_ZERO_WIDTH_ESCAPES = "bBAz"
_PROPERTY_ESCAPES = "pP"


class _Unbounded(Exception):
    pass


def longest(pattern: str) -> int | None:
    try:
        width, end = _alternation(pattern, 0)
    except _Unbounded:
        return None
    return width if end >= len(pattern) else None  # a stray `)`: not a pattern RE2 compiled


def _alternation(pattern: str, pos: int) -> tuple[int, int]:
    """Branches separated by `|` up to a closing `)` or the end: the widest branch."""
    widest = 0
    while True:
        width, pos = _sequence(pattern, pos)
        widest = max(widest, width)
        if pos < len(pattern) and pattern[pos] == "|":
            pos += 1
            continue
        return widest, pos


def _sequence(pattern: str, pos: int) -> tuple[int, int]:
    total = 0
    while pos < len(pattern) and pattern[pos] not in "|)":
        width, pos = _atom(pattern, pos)
        width, pos = _quantified(pattern, pos, width)
        total += width
    return total, pos


def _quantified(pattern: str, pos: int, width: int) -> tuple[int, int]:
    while pos < len(pattern):
        char = pattern[pos]
        if char in "*+":
            if width:
                raise _Unbounded
            pos += 1
        elif char == "?":
            pos += 1
        elif char == "{" and (repeat := _REPEAT.match(pattern, pos)):
            low, comma, high = repeat.group(1), repeat.group(2), repeat.group(3)
            if comma and not high:
                if width:
                    raise _Unbounded
            else:
                width *= int(high) if comma else int(low)
            pos = repeat.end()
        else:
            return width, pos
        if pos < len(pattern) and pattern[pos] == "?":
            pos += 1  # lazy: same width
    return width, pos


def _atom(pattern: str, pos: int) -> tuple[int, int]:
    char = pattern[pos]
    if char == "(":
        return _group(pattern, pos + 1)
    if char == "[":
        return 1, _class_end(pattern, pos + 1)
    if char == "\\":
        return _escape(pattern, pos + 1)
    if char in "^$":
        return 0, pos + 1
    return 1, pos + 1


def _group(pattern: str, pos: int) -> tuple[int, int]:
    if pattern.startswith("?", pos):
        if pattern.startswith(("?P<", "?<"), pos):
            pos = pattern.index(">", pos) + 1
        else:
            close = pos + 1
            while pattern[close] not in ":)":
                close += 1
            if pattern[close] == ")":
                return 0, close + 1  # `(?i)`: flags only
            pos = close + 1
    width, pos = _alternation(pattern, pos)
    return width, pos + 1  # past `)`


def _class_end(pattern: str, pos: int) -> int:
    if pattern.startswith("^", pos):
        pos += 1
    if pattern.startswith("]", pos):
        pos += 1  # a leading `]` is a member
    while pattern[pos] != "]":
        if pattern[pos] == "\\":
            pos += 2
        elif pattern.startswith("[:", pos) and (end := pattern.find(":]", pos + 2)) >= 0:
            pos = end + 2
        else:
            pos += 1
    return pos + 1


def _escape(pattern: str, pos: int) -> tuple[int, int]:
    char = pattern[pos]
    if char in _ZERO_WIDTH_ESCAPES:
        return 0, pos + 1
    if char == "Q":
        end = pattern.find("\\E", pos + 1)
        if end < 0:
            return len(pattern) - pos - 1, len(pattern)
        return end - pos - 1, end + 2
    if char in _PROPERTY_ESCAPES or char == "x":
        if pattern.startswith("{", pos + 1):
            return 1, pattern.index("}", pos) + 1
        return 1, pos + (2 if char in _PROPERTY_ESCAPES else 3)
    if char.isdigit():
        end = pos + 1
        while end < len(pattern) and end < pos + 3 and pattern[end] in "01234567":
            end += 1
        return 1, end  # an octal escape
    return 1, pos + 1
