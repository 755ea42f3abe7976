"""PHI validators, each with positives and near-miss negatives, and the detectors end to end."""

from __future__ import annotations

import pytest

from sentinel.interaction import Operation
from sentinel.policy import phi
from sentinel.policy.loading import parse_policy


@pytest.mark.parametrize("value", ["219-55-0187", "001-01-0001", "899 99 9999", "665-12-3456"])
def test_ssn_valid(value: str) -> None:
    assert phi.valid_ssn(value)


@pytest.mark.parametrize(
    "value",
    ["000-12-3456", "666-12-3456", "900-12-3456", "987-65-4321", "123-00-4567", "123-45-0000", "078-05-1120"],
)
def test_ssn_never_issued(value: str) -> None:
    assert not phi.valid_ssn(value)


@pytest.mark.parametrize("value", ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "6011111111111117"])
def test_payment_card_valid(value: str) -> None:
    assert phi.valid_payment_card(value)


@pytest.mark.parametrize(
    "value",
    ["4111 1111 1111 1112", "1234567812345670", "0000000000000000", "4111111", "9111111111111111"],
)
def test_payment_card_invalid(value: str) -> None:
    assert not phi.valid_payment_card(value)


@pytest.mark.parametrize("value", ["415-555-2671", "(212) 736-5000", "+1 650 253 0000", "16502530000"])
def test_nanp_phone_valid(value: str) -> None:
    assert phi.valid_nanp_phone(value)


@pytest.mark.parametrize(
    "value",
    ["123-456-7890", "415-155-2671", "911-555-2671", "415-911-2671", "212-555-0150", "492-555-2671", "555-2671"],
)
def test_nanp_phone_invalid(value: str) -> None:
    assert not phi.valid_nanp_phone(value)


@pytest.mark.parametrize("value", ["jane.doe@example.org", "a+tag@mail.co.uk"])
def test_email_valid(value: str) -> None:
    assert phi.valid_email(value)


@pytest.mark.parametrize("value", [".jane@example.org", "jane.@example.org", "ja..ne@example.org", "jane@-x.org"])
def test_email_invalid(value: str) -> None:
    assert not phi.valid_email(value)


@pytest.mark.parametrize("value", ["03/14/2024", "14/03/2024", "2024-02-29", "1/2/85", "31.12.1999"])
def test_numeric_date_valid(value: str) -> None:
    assert phi.valid_numeric_date(value)


@pytest.mark.parametrize("value", ["13/14/2024", "2023-02-29", "02/30/2024", "1/2/1850", "2024-13-01"])
def test_numeric_date_invalid(value: str) -> None:
    assert not phi.valid_numeric_date(value)


@pytest.mark.parametrize("value", ["March 4, 2024", "4th Mar 2024", "Sept 2019", "Feb 29, 2024"])
def test_month_date_valid(value: str) -> None:
    assert phi.valid_month_date(value)


@pytest.mark.parametrize("value", ["Feb 30, 2024", "March 4, 1492", "Feb 29, 2023"])
def test_month_date_invalid(value: str) -> None:
    assert not phi.valid_month_date(value)


def test_ip_addresses() -> None:
    assert phi.valid_ipv4("10.1.2.3") and phi.valid_ipv4("192.168.0.254")
    assert not phi.valid_ipv4("256.1.1.1") and not phi.valid_ipv4("0.0.0.0") and not phi.valid_ipv4("1.2.3")
    assert phi.valid_ipv6("2001:db8::8a2e:370:7334") and phi.valid_ipv6("fe80::1")
    assert not phi.valid_ipv6("12:30:45") and not phi.valid_ipv6("2001:db8:::1")


def test_medicare_beneficiary_identifier() -> None:
    assert phi.valid_mbi("1EG4-TE5-MK73") and phi.valid_mbi("1EG4TE5MK73")
    assert not phi.valid_mbi("0EG4-TE5-MK73")  # first character 1-9
    assert not phi.valid_mbi("1SG4-TE5-MK73")  # S is never used
    assert not phi.valid_mbi("1EG4-TE5-MK7")


def test_vin_check_digit() -> None:
    assert phi.valid_vin("1M8GDM9AXKP042788") and phi.valid_vin("11111111111111111")
    assert not phi.valid_vin("1M8GDM9A1KP042788")  # wrong check digit
    assert not phi.valid_vin("1M8GDM9AXKP04278O")  # O is not allowed


def test_dea_checksum() -> None:
    assert phi.valid_dea("AB1234563")
    assert not phi.valid_dea("AB1234564") and not phi.valid_dea("A11234563")


def test_luhn() -> None:
    assert phi.luhn("79927398713") and not phi.luhn("79927398710")


POSITIVE = {
    "ssn": "His SSN is 219-55-0187.",
    "phone": "Call (415) 555-2671 tomorrow.",
    "email": "Write to jane.doe@example.org today.",
    "date": "Admitted on March 4, 2024 for observation.",
    "age_over_89": "The patient is 93 years old.",
    "mrn": "Chart: MRN 00482913 reviewed.",
    "health_plan_id": "Medicare MBI 1EG4-TE5-MK73 on file.",
    "account_number": "Card 4111 1111 1111 1111 was charged.",
    "license_number": "Prescriber DEA AB1234563 signed.",
    "vehicle_id": "VIN 1M8GDM9AXKP042788 registered.",
    "url": "See https://portal.example.org/patients/8812 now.",
    "ip_address": "Logged in from 203.0.113.42 twice.",
    "address": "She lives at 1600 Amphitheatre Parkway in town.",
    "zip_code": "Mountain View, CA 94043 area.",
    "name": "Seen by Dr. Gregory House in clinic.",
}

NEAR_MISS = [
    "Version 3.11.7 was released; build 2024 shipped.",
    "The invoice total was 1234.56 and order 123-456-7890 shipped.",
    "Room 000-12-3456 is a code, not an SSN; nor is 666-12-3456.",
    "Call 555-0123 or extension 42; ticket 12-345-6789.",
    "The year 2024 and the ratio 12:30:45 are fine.",
    "Card 4111 1111 1111 1112 fails its check digit.",
    "Meet me at the main street market.",
    "We may see 13/14/2024 in broken data.",
]


@pytest.fixture(scope="module")
def scanner():  # type: ignore[no-untyped-def]
    policy = parse_policy("sampling: []\n")
    return policy.active(tuple(range(len(policy.items))), True).request


@pytest.mark.parametrize(("category", "text"), sorted(POSITIVE.items()))
def test_detector_finds(scanner, category: str, text: str) -> None:  # type: ignore[no-untyped-def]
    found = {hit.detector.category for hit in scanner.scan(text)}
    assert category in found


@pytest.mark.parametrize("text", NEAR_MISS)
def test_detector_ignores_near_misses(scanner, text: str) -> None:  # type: ignore[no-untyped-def]
    assert [(hit.detector.category, text[hit.start : hit.end]) for hit in scanner.scan(text)] == []


def test_every_form_is_bounded_and_compiles() -> None:
    policy = parse_policy("sampling: []\n")
    assert policy.plan("/v1/chat/completions", Operation.CHAT).fixed
    detectors = [d for item in policy.items for d in item.request]
    assert len(detectors) == len(phi.FORMS)
    assert max(d.max_length for d in detectors) < 300
