"""Offline PHI/PII detectors: a pattern for each form an identifier takes in text, plus a validator
that throws out look-alikes (checksums, impossible ranges, calendar dates). No model, no download.

Categories follow the HIPAA Safe Harbor identifiers (45 CFR 164.514(b)(2)(i)) that plain text can
carry; docs/policy.md maps each to its letter. Findings leave this module as categories and counts
only: the matched values never reach annotations, metrics or logs.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers


class Category(StrEnum):
    NAME = "name"
    ADDRESS = "address"
    ZIP_CODE = "zip_code"
    DATE = "date"
    AGE_OVER_89 = "age_over_89"
    PHONE = "phone"
    EMAIL = "email"
    SSN = "ssn"
    MRN = "mrn"
    HEALTH_PLAN_ID = "health_plan_id"
    ACCOUNT_NUMBER = "account_number"
    LICENSE_NUMBER = "license_number"
    VEHICLE_ID = "vehicle_id"
    URL = "url"
    IP_ADDRESS = "ip_address"


Validator = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Form:
    """One way an identifier is written. `group` is the capture group holding the value itself (the
    rest is context such as "MRN:" that is kept when redacting); 0 means the whole match."""

    category: Category
    pattern: str
    validator: Validator | None = None
    group: int = 0


def digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


# --- validators -------------------------------------------------------------------------------

_SSN_NEVER_ISSUED = {"078051120", "219099999"}  # numbers printed on sample cards, published as void


def valid_ssn(text: str) -> bool:
    """SSA never issues area 000, 666 or 900-999, group 00 or serial 0000 (POMS RM 10201.035)."""
    number = digits(text)
    if len(number) != 9 or number in _SSN_NEVER_ISSUED:
        return False
    area, group, serial = number[:3], number[3:5], number[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def luhn(number: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(number)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def valid_payment_card(text: str) -> bool:
    """13-19 digits, an issuer prefix in use (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay)
    and a valid Luhn check digit."""
    number = digits(text)
    if not 13 <= len(number) <= 19 or not luhn(number) or len(set(number)) == 1:
        return False
    two, four = int(number[:2]), int(number[:4])
    return (
        number[0] == "4"
        or 51 <= two <= 55
        or 2221 <= four <= 2720
        or two in (34, 37, 36, 38, 62, 65)
        or four == 6011
        or 644 <= int(number[:3]) <= 649
        or 3528 <= four <= 3589
        or 300 <= int(number[:3]) <= 305
    )


def _libphonenumber_valid(number: str, region: str | None) -> bool:
    """Google's libphonenumber (the `phonenumbers` port): a number of a real numbering plan, with a
    length and prefix that plan assigns."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(parsed))


def valid_nanp_phone(text: str) -> bool:
    """A North American number valid in libphonenumber's plan (area code and exchange 2-9, no N11
    service codes, assigned area codes), and not 555-0100..0199, reserved for fiction."""
    number = digits(text)
    if len(number) == 11 and number[0] == "1":
        number = number[1:]
    if len(number) != 10:
        return False
    area, exchange, line = number[:3], number[3:6], number[6:]
    if area[0] in "01" or exchange[0] in "01" or area[1] == "9":
        return False
    if area[1:] == "11" or exchange[1:] == "11":
        return False
    if exchange == "555" and line.startswith("01"):
        return False
    return _libphonenumber_valid(number, "US")


def valid_international_phone(text: str) -> bool:
    """`+` and a country code: valid in that country's numbering plan (libphonenumber)."""
    return 8 <= len(digits(text)) <= 15 and _libphonenumber_valid("+" + digits(text), None)


def valid_email(text: str) -> bool:
    local, _, domain = text.rpartition("@")
    if not local or local[0] == "." or local[-1] == "." or ".." in local or ".." in domain:
        return False
    labels = domain.split(".")
    return len(labels) >= 2 and all(label and label[0] != "-" and label[-1] != "-" for label in labels)


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def _year(text: str) -> int:
    value = int(text)
    if len(text) == 2:
        return 2000 + value if value < 50 else 1900 + value
    return value


def valid_numeric_date(text: str) -> bool:
    """M/D/Y or D/M/Y (either reading must be a real date) or ISO Y-M-D, years 1900-2099."""
    parts = [p for p in text.replace(".", "/").replace("-", "/").split("/") if p]
    if len(parts) != 3:
        return False
    if len(parts[0]) == 4:
        year, month, day = int(parts[0]), int(parts[1]), int(parts[2])
        return 1900 <= year <= 2099 and _real_date(year, month, day)
    year = _year(parts[2])
    if not 1900 <= year <= 2099:
        return False
    first, second = int(parts[0]), int(parts[1])
    return _real_date(year, first, second) or _real_date(year, second, first)


_MONTHS = {
    name: index
    for index, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}


def valid_month_date(text: str) -> bool:
    """ "March 4, 2024", "4 March 2024", "Mar. 2024": a real month, day and year (1900-2099)."""
    words = text.replace(",", " ").replace(".", " ").split()
    month = next((_MONTHS[w.lower()] for w in words if w.lower() in _MONTHS), None)
    numbers = [w.rstrip("stndrh") for w in words if w[0].isdigit()]
    if month is None or not numbers or not numbers[-1].isdigit():
        return False
    year = int(numbers[-1])
    if not 1900 <= year <= 2099:
        return False
    if len(numbers) == 1:
        return True
    return numbers[0].isdigit() and _real_date(year, month, int(numbers[0]))


def valid_ipv4(text: str) -> bool:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return not address.is_unspecified


def valid_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return text.count(":") >= 2 and any(ch.isdigit() or ch.isalpha() for ch in text)


def has_digits(count: int) -> Validator:
    def check(text: str) -> bool:
        return len(digits(text)) >= count

    return check


_MBI_LETTERS = set("ACDEFGHJKMNPQRTUVWXY")


def valid_mbi(text: str) -> bool:
    """Medicare Beneficiary Identifier (CMS format): C A AN N A AN N A A N N; letters exclude S, L, O,
    I, B, Z; the first character is 1-9."""
    value = text.replace("-", "").upper()
    if len(value) != 11:
        return False
    kinds = "CAMNAMNAANN"
    for char, kind in zip(value, kinds, strict=True):
        if kind == "C" and not ("1" <= char <= "9"):
            return False
        if kind == "N" and not char.isdigit():
            return False
        if kind == "A" and char not in _MBI_LETTERS:
            return False
        if kind == "M" and not (char.isdigit() or char in _MBI_LETTERS):
            return False
    return True


_VIN_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMNPR", [1, 2, 3, 4, 5, 7, 9], strict=True)),
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def valid_vin(text: str) -> bool:
    """17 characters without I, O, Q, and the ISO 3779 / 49 CFR 565 check digit in position 9."""
    value = text.upper()
    if len(value) != 17 or any(ch not in _VIN_VALUES for ch in value) or not any(ch.isdigit() for ch in value):
        return False
    total = sum(_VIN_VALUES[ch] * weight for ch, weight in zip(value, _VIN_WEIGHTS, strict=True))
    check = total % 11
    return value[8] == ("X" if check == 10 else str(check))


def valid_dea(text: str) -> bool:
    """DEA registration number: two letters, seven digits, the last a checksum of the other six."""
    value = text.upper()
    if len(value) != 9 or not value[:2].isalpha() or not value[2:].isdigit():
        return False
    d = [int(ch) for ch in value[2:]]
    return (d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10 == d[6]


# --- forms ------------------------------------------------------------------------------------

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_STREET = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|"
    r"Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl)"
)
_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|"
    "NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|GU|VI|AS|MP"
)
_LABEL = r"\s{0,3}(?:number|num\.?|no\.?|#|id)?\s{0,3}[:#=]?\s{0,3}"

FORMS: tuple[Form, ...] = (
    Form(Category.SSN, r"\b\d{3}[ .-]\d{2}[ .-]\d{4}\b", valid_ssn),
    Form(Category.SSN, r"(?i:\bssn|social\s{1,3}security)" + _LABEL + r"(\d{9})\b", valid_ssn, 1),
    Form(Category.PHONE, r"(?:\+1[ .-]?)?\(\d{3}\)\s?\d{3}[ .-]\d{4}\b", valid_nanp_phone),
    Form(Category.PHONE, r"(?:\+1[ .-]?|\b1[ .-])?\b\d{3}[ .-]\d{3}[ .-]\d{4}\b", valid_nanp_phone),
    Form(Category.PHONE, r"\+1\d{10}\b", valid_nanp_phone),
    Form(
        Category.PHONE,
        r"(?i:\b(?:phone|tel|telephone|fax|cell|mobile))" + _LABEL + r"(\+?1?\d{10})\b",
        valid_nanp_phone,
        1,
    ),
    Form(Category.PHONE, r"\+[2-9]\d{0,2}(?:[ .-]?\d{1,5}){2,6}\b", valid_international_phone),
    Form(Category.EMAIL, r"\b[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,40}\.){1,4}[A-Za-z]{2,24}\b", valid_email),
    Form(Category.DATE, r"\b\d{4}-\d{2}-\d{2}\b", valid_numeric_date),
    Form(Category.DATE, r"\b\d{1,2}[/-]\d{1,2}[/-](?:\d{4}|\d{2})\b", valid_numeric_date),
    Form(Category.DATE, r"\b\d{1,2}\.\d{1,2}\.\d{4}\b", valid_numeric_date),
    Form(Category.DATE, r"(?i:\b" + _MONTH + r")\.?\s{1,3}\d{1,2}(?:st|nd|rd|th)?,?\s{1,3}\d{4}\b", valid_month_date),
    Form(Category.DATE, r"\b\d{1,2}(?:st|nd|rd|th)?\s{1,3}(?i:" + _MONTH + r")\.?,?\s{1,3}\d{4}\b", valid_month_date),
    Form(Category.DATE, r"\b" + _MONTH + r"\.?,?\s{1,3}\d{4}\b", valid_month_date),
    Form(Category.AGE_OVER_89, r"\b(?:9\d|1[01]\d)[ -](?i:years?|yrs?)[ -](?i:old)\b"),
    Form(Category.AGE_OVER_89, r"(?i:\baged?)\s{0,3}[:=]?\s{0,3}(9\d|1[01]\d)\b", None, 1),
    Form(
        Category.MRN,
        r"(?i:\bMRN|\bmedical\s{1,3}record|\bchart|\bpatient)" + _LABEL + r"([A-Za-z]{0,3}-?\d[\d-]{4,14})\b",
        has_digits(5),
        1,
    ),
    Form(
        Category.HEALTH_PLAN_ID,
        r"\b[1-9][A-Z][A-Z0-9]\d-?[A-Z][A-Z0-9]\d-?[A-Z]{2}\d{2}\b",
        valid_mbi,
    ),
    Form(
        Category.HEALTH_PLAN_ID,
        r"(?i:\b(?:member|subscriber|beneficiary|policy|health\s{1,3}plan|insurance|medicaid|medicare))"
        + _LABEL
        + r"([A-Za-z0-9][A-Za-z0-9-]{5,19})\b",
        has_digits(4),
        1,
    ),
    Form(Category.ACCOUNT_NUMBER, r"\b(?:\d[ -]?){12,18}\d\b", valid_payment_card),
    Form(
        Category.ACCOUNT_NUMBER,
        r"(?i:\b(?:account|acct|routing|iban))" + _LABEL + r"([A-Za-z]{0,4}\d[\d -]{5,30}\d)\b",
        has_digits(6),
        1,
    ),
    Form(Category.LICENSE_NUMBER, r"\b[A-Za-z]{2}\d{7}\b", valid_dea),
    Form(
        Category.LICENSE_NUMBER,
        r"(?i:\b(?:license|licence|certificate|permit|passport|DL|NPI))"
        + _LABEL
        + r"([A-Za-z0-9][A-Za-z0-9-]{4,19})\b",
        has_digits(4),
        1,
    ),
    Form(Category.VEHICLE_ID, r"\b[A-HJ-NPR-Za-hj-npr-z0-9]{17}\b", valid_vin),
    Form(
        Category.VEHICLE_ID,
        r"(?i:\b(?:license\s{1,3}plate|plate|VIN))" + _LABEL + r"([A-Za-z0-9][A-Za-z0-9 -]{1,8}[A-Za-z0-9])\b",
        has_digits(1),
        1,
    ),
    Form(Category.URL, r"(?i:\b(?:https?|ftp)://)[^\s<>\"'`]{0,200}[^\s<>\"'`.,;:!?)\]]"),
    Form(Category.URL, r"(?i:\bwww\.)[A-Za-z0-9-]{1,40}(?:\.[A-Za-z0-9-]{1,40}){1,3}(?:/[^\s<>\"'`]{0,120})?"),
    Form(Category.IP_ADDRESS, r"\b(?:\d{1,3}\.){3}\d{1,3}\b", valid_ipv4),
    Form(Category.IP_ADDRESS, r"(?i:\b(?:[0-9a-f]{1,4}:){1,7}(?::|[0-9a-f]{1,4})(?::[0-9a-f]{1,4}){0,6})", valid_ipv6),
    Form(
        Category.ADDRESS,
        r"\b\d{1,6}\s{1,3}(?:[A-Z0-9][A-Za-z0-9.'-]{0,24}\s{1,3}){1,4}" + _STREET + r"\b\.?"
        r"(?:,?\s{1,3}(?:Apt|Suite|Ste|Unit|#)\.?\s{0,3}[A-Za-z0-9-]{1,6})?",
    ),
    Form(Category.ZIP_CODE, r"\b(?:" + _STATES + r"),?\s{1,3}(\d{5}(?:-\d{4})?)\b", None, 1),
    Form(
        Category.NAME,
        r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s{1,3}([A-Z][a-z]{1,20}(?:[ -][A-Z][a-z]{1,20}){0,2})\b",
        None,
        1,
    ),
    Form(
        Category.NAME,
        r"(?i:\b(?:patient|pt|name|patient\s{1,3}name|next\s{1,3}of\s{1,3}kin|guardian))\s{0,3}[:=-]\s{0,3}"
        r"([A-Z][a-z]{1,20}(?:[ -][A-Z][a-z']{1,20}){1,2})\b",
        None,
        1,
    ),
)
"""Every form, in priority order: when two overlap, the earlier category wins."""

ALL_CATEGORIES: tuple[Category, ...] = tuple(Category)
