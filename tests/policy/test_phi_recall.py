"""The PHI detectors against the labelled set (tests/policy/phi_corpus.py): the recall and
false-positive numbers docs/policy.md publishes may only get better."""

from __future__ import annotations

import pytest

from sentinel.policy.loading import parse_policy
from tests.policy.phi_corpus import NEGATIVES, POSITIVES

# category: identifiers found, as published in docs/policy.md
PUBLISHED = {
    "ssn": 8, "phone": 12, "email": 6, "date": 9, "age_over_89": 4, "mrn": 4, "health_plan_id": 4,
    "account_number": 6, "license_number": 4, "vehicle_id": 3, "url": 4, "ip_address": 4, "address": 4,
    "zip_code": 3, "name": 4,
}  # fmt: skip

_POLICY = parse_policy("sampling: []\n")
_SCANNER = _POLICY.active(tuple(range(len(_POLICY.items))), True).request


def find(text: str) -> set[str]:
    return {hit.detector.category for hit in _SCANNER.scan(text) if hit.detector.category}


@pytest.mark.parametrize("category", sorted(POSITIVES))
def test_recall_is_at_least_as_published(category: str) -> None:
    found = [text for text in POSITIVES[category] if category in find(text)]
    assert len(found) >= PUBLISHED[category], [t for t in POSITIVES[category] if t not in found]


def test_no_false_positives_on_the_negatives() -> None:
    assert {text: find(text) for text in NEGATIVES if find(text)} == {}
