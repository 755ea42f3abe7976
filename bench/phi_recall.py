"""Recall and false positives of the PHI detectors over the labelled set in tests/policy/phi_corpus.py,
beside Microsoft Presidio's pattern recognizers where it has one (if `presidio-analyzer` is
installed; it is not a dependency). Prints the Markdown table docs/policy.md publishes.

    PYTHONPATH=. python bench/phi_recall.py
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sentinel.policy.loading import parse_policy
from tests.policy.phi_corpus import NEGATIVES, POSITIVES, PRESIDIO


def sentinel_finder() -> Callable[[str], set[str]]:
    policy = parse_policy("sampling: []\n")
    scanner = policy.active(tuple(range(len(policy.items))), True).request
    return lambda text: {hit.detector.category for hit in scanner.scan(text) if hit.detector.category}


def presidio_finders() -> dict[str, Callable[[str], bool]]:
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)  # offline: it falls back to its bundled list
    try:
        from presidio_analyzer import predefined_recognizers
    except ImportError:
        return {}
    finders: dict[str, Callable[[str], bool]] = {}
    for category, (name, entity) in PRESIDIO.items():
        recognizer: Any = getattr(predefined_recognizers, name)()

        def found(text: str, recognizer: Any = recognizer, entity: str = entity) -> bool:
            return bool(recognizer.analyze(text, [entity], None))

        finders[category] = found
    return finders


def measure() -> list[tuple[str, int, int, int, str, str]]:
    """Per category: positives, found, false positives on the negatives, and Presidio's two."""
    find = sentinel_finder()
    presidio = presidio_finders()
    rows = []
    for category, texts in POSITIVES.items():
        found = sum(category in find(text) for text in texts)
        false = sum(category in find(text) for text in NEGATIVES)
        other = presidio.get(category)
        p_found = f"{sum(other(t) for t in texts)}/{len(texts)}" if other else "-"
        p_false = str(sum(other(t) for t in NEGATIVES)) if other else "-"
        rows.append((category, len(texts), found, false, p_found, p_false))
    return rows


def main() -> None:
    print(f"{sum(map(len, POSITIVES.values()))} labelled identifiers, {len(NEGATIVES)} sentences without any\n")
    print("| category | Sentinel recall | Sentinel false positives | Presidio recall | Presidio false positives |")
    print("|---|---|---|---|---|")
    for category, total, found, false, p_found, p_false in measure():
        print(f"| `{category}` | {found}/{total} | {false} | {p_found} | {p_false} |")


if __name__ == "__main__":
    main()
