"""Personal data in text: find it (with checksums where the format has one) and redact it.

Detected kinds, and why each rule is as strict as it is:

- ``email``: ``local@domain.tld``.
- ``card_number``: 13-19 digits, optionally grouped by spaces or dashes, with a
  known issuer prefix and length *and* a valid Luhn check digit. Bare digit runs
  are also order numbers, so the prefix and length table keeps a random
  Luhn-valid order id from being taken for a card.
- ``iban``: country code, check digits and the country's registered length,
  validated with the ISO 13616 mod-97 check.
- ``us_ssn``: ``AAA-GG-SSSS`` with the SSA's never-issued ranges excluded
  (area 000, 666, 900-999; group 00; serial 0000).
- ``uk_nino``: two prefix letters from HMRC's allowed set, six digits, suffix A-D.
- ``es_dni``: Spanish DNI (8 digits) or NIE (X/Y/Z and 7 digits) with its
  mod-23 control letter; the checksum makes it precise enough to include.
- ``phone``: 9-15 digits that start with ``+`` or ``(`` or are split into
  groups by spaces, dots or dashes (but not in the SSN shape ``AAA-GG-SSSS``).
  An unseparated digit run is not taken for a phone number: in support traffic
  it is far more often an order or invoice id.

Where matches overlap, the more specific kind wins (in the order above, phone last).

Example:
    >>> from agentgraph.pii import find_pii, redact_pii
    >>> [m.kind for m in find_pii("Mail jo@example.com, card 4111 1111 1111 1111, call +44 20 7946 0958")]
    ['email', 'card_number', 'phone']
    >>> redact_pii("My IBAN is DE89 3704 0044 0532 0130 00, order 113542617735902.")[0]
    'My IBAN is [IBAN], order 113542617735902.'

:func:`redact_pii_in` masks every string (and card-like integer) inside a
JSON-like value; the stores use it before they write (the decision log, the
trace store, idempotency records):

    >>> redact_pii_in({"args": {"order_id": 4111111111111111, "note": "to jo@example.com"}, "amount": 20})
    {'args': {'order_id': '[CARD_NUMBER]', 'note': 'to [EMAIL]'}, 'amount': 20}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

PIIKind = Literal["email", "card_number", "iban", "us_ssn", "uk_nino", "es_dni", "phone"]
PII_KINDS: tuple[PIIKind, ...] = ("email", "card_number", "iban", "us_ssn", "uk_nino", "es_dni", "phone")
"""Every kind, most specific first: the order in which overlapping matches are resolved."""


class PIIMatch(BaseModel):
    """One piece of personal data: its kind and where it stands in the text."""

    kind: PIIKind
    start: int
    end: int
    text: str


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
)
_DNI = re.compile(r"(?<![A-Za-z0-9])([XYZ]?)(\d{7,8})-?([A-Z])(?![A-Za-z0-9])")
_PHONE = re.compile(r"(?<![\w+(])(?:\+|\()?\d[\d ().-]{7,22}\d(?![\w-])")

# (issuer prefixes, allowed lengths): Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro.
_CARD_ISSUERS: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...] = (
    (("4",), (13, 16, 19)),
    (tuple(str(p) for p in range(51, 56)) + tuple(str(p) for p in range(2221, 2721)), (16,)),
    (("34", "37"), (15,)),
    (("6011", "65") + tuple(str(p) for p in range(644, 650)), (16, 19)),
    (tuple(str(p) for p in range(3528, 3590)), (16, 19)),
    (("36", "38", "300", "301", "302", "303", "304", "305"), (14, 16)),
    (("62",), (16, 17, 18, 19)),
    (("50", "56", "57", "58", "63", "67"), (12, 13, 14, 15, 16, 17, 18, 19)),
)

# IBAN lengths from the SWIFT IBAN registry.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn (mod-10) check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether a compact IBAN has its country's length and passes the ISO 13616 mod-97 check."""
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _card_candidates(text: str) -> Iterator[tuple[int, int]]:
    for match in _CARD.finditer(text):
        digits = _digits(match[0])
        issued = any(len(digits) in lengths and digits.startswith(prefixes) for prefixes, lengths in _CARD_ISSUERS)
        if issued and luhn_valid(digits):
            yield match.span()


def _iban_candidates(text: str) -> Iterator[tuple[int, int]]:
    # The pattern is greedy and may run into following upper-case words; the
    # country's registered length says where the IBAN really ends.
    for match in _IBAN.finditer(text):
        length = _IBAN_LENGTHS.get(match[0][:2])
        if length is None:
            continue
        end, kept = match.start(), 0
        while kept < length and end < match.end():
            kept += text[end] != " "
            end += 1
        if kept == length and iban_valid(text[match.start() : end].replace(" ", "")):
            yield match.start(), end


def _ssn_candidates(text: str) -> Iterator[tuple[int, int]]:
    for match in _SSN.finditer(text):
        area, group, serial = match.groups()
        if area != "000" and area != "666" and not area.startswith("9") and group != "00" and serial != "0000":
            yield match.span()


def _dni_candidates(text: str) -> Iterator[tuple[int, int]]:
    for match in _DNI.finditer(text):
        prefix, number, letter = match.groups()
        if (prefix and len(number) != 7) or (not prefix and len(number) != 8):
            continue
        # An NIE's X/Y/Z stands for a leading 0/1/2 in the control computation.
        value = int(f"{'XYZ'.index(prefix)}{number}") if prefix else int(number)
        if _DNI_LETTERS[value % 23] == letter:
            yield match.span()


def _phone_candidates(text: str) -> Iterator[tuple[int, int]]:
    for match in _PHONE.finditer(text):
        candidate = match[0]
        grouped = candidate[0] in "+(" or re.search(r"\d[ .-]+\d", candidate)
        # The SSN shape is left to the SSN rule: a never-issued SSN is no phone number either.
        if grouped and 9 <= len(_digits(candidate)) <= 15 and not _SSN.fullmatch(candidate):
            yield match.span()


def _pattern_candidates(pattern: re.Pattern[str]) -> Callable[[str], Iterator[tuple[int, int]]]:
    return lambda text: (match.span() for match in pattern.finditer(text))


_DETECTORS: dict[PIIKind, Callable[[str], Iterator[tuple[int, int]]]] = {
    "email": _pattern_candidates(_EMAIL),
    "card_number": _card_candidates,
    "iban": _iban_candidates,
    "us_ssn": _ssn_candidates,
    "uk_nino": _pattern_candidates(_NINO),
    "es_dni": _dni_candidates,
    "phone": _phone_candidates,
}


def find_pii(text: str, kinds: Sequence[PIIKind] = PII_KINDS) -> list[PIIMatch]:
    """Non-overlapping personal data in ``text``, in reading order."""
    unknown = set(kinds) - set(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {list(PII_KINDS)}")
    found: list[PIIMatch] = []
    for kind in PII_KINDS:
        if kind not in kinds:
            continue
        for start, end in _DETECTORS[kind](text):
            if all(end <= other.start or start >= other.end for other in found):
                found.append(PIIMatch(kind=kind, start=start, end=end, text=text[start:end]))
    return sorted(found, key=lambda match: match.start)


def default_mask(match: PIIMatch) -> str:
    """``[KIND]``, e.g. ``[EMAIL]``."""
    return f"[{match.kind.upper()}]"


def redact_spans(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """``text`` with each non-overlapping ``(start, end, replacement)`` span replaced."""
    pieces, cursor = [], 0
    for start, end, replacement in sorted(spans):
        pieces += [text[cursor:start], replacement]
        cursor = end
    return "".join(pieces) + text[cursor:]


def redact_pii(
    text: str, kinds: Sequence[PIIKind] = PII_KINDS, mask: Callable[[PIIMatch], str] = default_mask
) -> tuple[str, list[PIIMatch]]:
    """``text`` with its personal data masked, and what was masked."""
    matches = find_pii(text, kinds)
    return redact_spans(text, [(m.start, m.end, mask(m)) for m in matches]), matches


def redact_pii_in(value: Any, kinds: Sequence[PIIKind] = PII_KINDS) -> Any:
    """``value`` with the personal data in every string masked, through dicts, lists and tuples (as lists).

    An integer that reads as personal data (a card number given as a number) becomes its mask;
    other values stay as they are.
    """
    if isinstance(value, str):
        return redact_pii(value, kinds)[0]
    if isinstance(value, Mapping):
        return {key: redact_pii_in(item, kinds) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_pii_in(item, kinds) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        masked = redact_pii(str(value), kinds)[0]
        return value if masked == str(value) else masked
    return value
