"""PII detection and redaction: each kind, its checksum, its look-alikes, and the real support data."""

from __future__ import annotations

import pytest

from agentgraph.pii import PII_KINDS, find_pii, iban_valid, luhn_valid, redact_pii


def kinds_in(text: str) -> list[str]:
    return [match.kind for match in find_pii(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jo.smith+orders@mail.example.co.uk please", ["email"]),
        ("card 4111 1111 1111 1111 expires soon", ["card_number"]),
        ("amex 3782-822463-10005", ["card_number"]),
        ("pay with 5555555555554444", ["card_number"]),
        ("IBAN DE89 3704 0044 0532 0130 00", ["iban"]),
        ("IBAN GB82WEST12345698765432", ["iban"]),
        ("my SSN is 123-45-6789", ["us_ssn"]),
        ("NINO AB 12 34 56 C", ["uk_nino"]),
        ("DNI 12345678Z", ["es_dni"]),
        ("NIE X1234567L", ["es_dni"]),
        ("call +44 20 7946 0958", ["phone"]),
        ("call (555) 123-4567", ["phone"]),
        ("call 555.123.4567", ["phone"]),
    ],
)
def test_each_kind_is_found(text, expected):
    assert kinds_in(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # Luhn fails
        "order 113542617735902",  # a bare 15-digit order id, no issuer prefix
        "order 00004587345 and invoice #85632",
        "IBAN DE88 3704 0044 0532 0130 00",  # mod-97 fails
        "IBAN DE8937040044053201",  # too short for Germany
        "SSN 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567",  # never-issued ranges
        "NINO BG 12 34 56 A",  # BG is not an allowed prefix
        "DNI 12345678A",  # wrong control letter
        "on 2024-01-15 at 10:30",
        "refund of $1499.00",
    ],
)
def test_look_alikes_are_not_pii(text):
    assert find_pii(text) == []


def test_checksums():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("XX82WEST12345698765432")


def test_iban_ends_where_its_country_says_even_before_capitals():
    text, matches = redact_pii("IBAN GB82 WEST 1234 5698 7654 32 THANKS A LOT")
    assert text == "IBAN [IBAN] THANKS A LOT"
    assert matches[0].text == "GB82 WEST 1234 5698 7654 32"


def test_a_spaced_card_number_is_a_card_not_a_phone():
    assert kinds_in("card 4111 1111 1111 1111 or phone +1 555 123 4567") == ["card_number", "phone"]


def test_redaction_masks_every_match_and_keeps_the_rest():
    text, matches = redact_pii("Hi, I'm jo@example.com, SSN 123-45-6789, order 4587345.")
    assert text == "Hi, I'm [EMAIL], SSN [US_SSN], order 4587345."
    assert [(m.kind, m.text) for m in matches] == [("email", "jo@example.com"), ("us_ssn", "123-45-6789")]


def test_redaction_with_a_custom_mask_and_a_subset_of_kinds():
    text, _ = redact_pii("jo@example.com, +44 20 7946 0958", kinds=["phone"], mask=lambda m: "***")
    assert text == "jo@example.com, ***"


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown PII kinds"):
        find_pii("x", kinds=["passport"])


def test_no_false_positives_on_the_support_data(support_splits):
    # 4,514 real requests full of order, invoice and amount numbers, and no personal data.
    rows = [row for split in support_splits.values() for row in split]
    assert len(rows) == 4514
    flagged = [(row.text, kinds_in(row.text)) for row in rows if find_pii(row.text, PII_KINDS)]
    assert flagged == []
