"""The ZPL label builder, without a renderer: escaping, structure, fitting, customs block."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from cloud.carriers import Address, CustomsItem, Shipment, escape_field, render_label
from cloud.carriers.zpl import (
    LABEL_HEIGHT_DOTS,
    LABEL_WIDTH_DOTS,
    UNICODE_FONT,
    barcode_module_width,
    country_name,
)

AT = datetime(2025, 3, 14, 9, 26, tzinfo=UTC)
LEJ = Address(name="Packline Leipzig", street="Logistikring 1", postal_code="04435", city="Schkeuditz",
              country="DE", company="Packline DE-LEJ")
ATHENS = Address(name="Γιώργος Παπαδόπουλος", street="Οδός Ερμού 15", postal_code="105 63", city="Αθήνα",
                 country="GR", phone="+302101234567")
LONDON = Address(name="Joe Bloggs", street="10 Downing Street", postal_code="SW1A 2AA", city="London",
                 country="GB", phone="+442079460000")
MUG = CustomsItem(sku="MUG-TI-450", description="Titanium mug 450 ml", qty=2, hs_code="732393", origin="CN",
                  unit_value=Decimal("24.90"), currency="EUR", weight_g=95)
TRACKING = "PL123456785DE"


def label(to: Address = ATHENS, **changes: object) -> str:
    s = Shipment(reference="ACME-10007", ship_from=LEJ, ship_to=to, weight_g=310, service_level="standard",
                 sender_name="Acme Outdoor GmbH")
    if to.country not in ("DE", "GR", "FR", "PL"):
        s = replace(s, customs=(MUG,), incoterm="DDP")
    s = replace(s, **changes)  # type: ignore[arg-type]
    return render_label(s, carrier_name="Packline Sandbox", service=s.service_level, tracking_number=TRACKING,
                        printed_at=AT)


# --- escape_field ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("Evil ^XZ~JR Corp", "Evil _5EXZ_7EJR Corp"),
        ("snake_case", "snake_5Fcase"),
        ("_5E", "_5F5E"),  # an escape lookalike stays text
        ("back\\slash \\& not a break", "back\\\\slash \\\\& not a break"),
        ("line\nbreak\ttab\x00nul\x1bESC\x7fDEL\x85NEL", "line_0Abreak_09tab_00nul_1BESC_7FDEL_C2_85NEL"),
        ("Γιώργος Παπαδόπουλος", "Γιώργος Παπαδόπουλος"),
        ("Zażółć gęślą jaźń", "Zażółć gęślą jaźń"),
        ("Příliš žluťoučký kůň úpěl ďábelské ódy", "Příliš žluťoučký kůň úpěl ďábelské ódy"),
        ("📦 Café 👩‍👩‍👧", "📦 Café 👩‍👩‍👧"),
        ("", ""),
    ],
)
def test_escape_field(text: str, escaped: str) -> None:
    assert escape_field(text) == escaped


def test_escaped_text_has_no_command_characters_left() -> None:
    nasty = "".join(chr(c) for c in range(0, 0x80)) + "^XZ~JR~HS^XA\\&"
    out = escape_field(nasty)
    assert "^" not in out and "~" not in out
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in out)
    # every indicator starts a two-digit hex byte
    assert all(re.fullmatch(r"[0-9A-F]{2}", out[i + 1:i + 3]) for i, c in enumerate(out) if c == "_")


# --- structure -------------------------------------------------------------------------------------------
ALLOWED_COMMANDS = {"XA", "CI", "PW", "LL", "LH", "FO", "A0", "A@", "FB", "FH", "FD", "FS", "GB", "FR", "BY",
                    "BC", "XZ"}


def commands(zpl: str) -> list[str]:
    """Command names in ``zpl``, skipping field data (which is escaped, so holds no ^ or ~)."""
    return re.findall(r"\^([A-Z@][A-Z0-9@])", re.sub(r"\^FD[^^]*", "^FD", zpl))


def test_one_label_4x6_at_203_dpi_utf8() -> None:
    zpl = label()
    assert zpl.startswith("^XA^CI28")
    assert zpl.endswith("^XZ") and zpl.count("^XA") == 1 and zpl.count("^XZ") == 1
    assert "^PW812" in zpl and "^LL1218" in zpl
    assert "~" not in zpl
    assert set(commands(zpl)) <= ALLOWED_COMMANDS


def test_injection_in_every_text_field_stays_text() -> None:
    evil = "Evil ^XZ~JR Corp ^XA^FO0,0^GB812,1218,812^FS ~HS _5E"
    to = Address(name=evil, street=evil, postal_code=evil, city=evil, country="CH", company=evil, phone=evil)
    item = replace(MUG, description=evil, hs_code=evil, currency=evil)
    zpl = label(to, customs=(item,), reference=evil, sender_name=evil, incoterm=evil)
    assert zpl.count("^XA") == 1 and zpl.count("^XZ") == 1 and "~" not in zpl
    assert set(commands(zpl)) <= ALLOWED_COMMANDS
    assert "Evil _5EXZ_7EJR Corp" in zpl


def test_contents_sender_recipient_service_weight_reference_barcode() -> None:
    zpl = label()
    for text in ("PACKLINE SANDBOX", "STANDARD", "Acme Outdoor GmbH / Packline DE-LEJ", "Logistikring 1",
                 "04435 Schkeuditz, Germany", "Γιώργος Παπαδόπουλος", "Οδός Ερμού 15", "105 63 Αθήνα", "GREECE",
                 "REF ACME-10007", "0.31 kg", "Printed 2025-03-14 09:26 UTC"):
        assert f"^FD{text}^FS" in zpl, text
    assert re.search(r"\^BY4,3,\d+\^BCN,\d+,Y,N,N\^FDPL123456785DE\^FS", zpl)
    assert "CN 22" not in zpl  # DE -> GR: inside the EU customs union
    # Greek needs a Unicode font; Latin text stays on font 0
    assert f"^A@N,50,22,{UNICODE_FONT}^FB764,1,0,L,0^FH^FDΓιώργος Παπαδόπουλος^FS" in zpl
    assert "^A0N,44,42^FB430,1,0,L,0^FH^FDGREECE^FS" in zpl


def test_uk_address_puts_the_postcode_after_the_town_and_adds_cn22() -> None:
    zpl = label(LONDON)
    assert "^FDLondon SW1A 2AA^FS" in zpl and "^FDUNITED KINGDOM^FS" in zpl
    for text in ("CUSTOMS DECLARATION CN 22", "Incoterm DDP", "Titanium mug 450 ml", "732393", "CN",
                 "49.80 EUR", "Total 2 item(s), 0.31 kg", "Total value 49.80 EUR"):
        assert f"^FD{text}^FS" in zpl, text


def test_customs_destination_without_items_is_refused() -> None:
    with pytest.raises(ValueError, match="customs"):
        label(LONDON, customs=())


def test_more_customs_items_than_rows_are_summarised() -> None:
    items = tuple(replace(MUG, sku=f"S{i}", description=f"Item {i}", currency="EUR" if i % 2 else "CHF")
                  for i in range(9))
    zpl = label(LONDON, customs=items)
    assert "^FDItem 3^FS" in zpl and "^FDItem 4^FS" not in zpl
    assert "^FD+ 5 more items, see the commercial invoice^FS" in zpl
    assert "^FDTotal value 249.00 CHF + 199.20 EUR^FS" in zpl


@pytest.mark.parametrize("tracking", ["", "PL 123", "PL12^XZ", "ÄÖÜ", "A" * 49])
def test_tracking_number_must_be_plain(tracking: str) -> None:
    s = Shipment("R", LEJ, ATHENS, 100, "standard")
    with pytest.raises(ValueError, match="tracking number"):
        render_label(s, carrier_name="X", service="standard", tracking_number=tracking, printed_at=AT)


def test_barcode_module_width() -> None:
    assert barcode_module_width("PL123456785DE") == 4  # (11*15+13 + 20) * 4 = 792 <= 812
    assert barcode_module_width("JJD0001234567890123") == 3
    assert barcode_module_width("1" * 30) == 2
    with pytest.raises(ValueError):
        barcode_module_width("1" * 48)


def test_country_names_in_english() -> None:
    assert country_name("CZ") == "Czechia"
    assert country_name("gb") == "United Kingdom"
    assert country_name("MD") == "Moldova"
    assert country_name("XK") == "Kosovo"
    assert country_name("ZZ") == "ZZ"


# --- fitting -------------------------------------------------------------------------------------------
FIELD = re.compile(r"\^FO(\d+),(\d+)\^A[0@]N,(\d+),(\d+)(?:,[^^]*)?(?:\^FR)?\^FB(\d+),(\d+),0,([LCR]),0\^FH\^FD([^^]*)\^FS")


def test_every_field_stays_on_the_label_even_with_huge_text() -> None:
    long = "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch " * 6
    greek = "Ζαχαρίας Παπαχριστοδουλόπουλος " * 8
    to = Address(name=greek, street=long, postal_code="SW1A 2AA", city=long, country="GB", company=long,
                 phone="+442079460000" * 5)
    zpl = label(to, reference="R" * 120, sender_name=long)
    fields = FIELD.findall(zpl)
    assert len(fields) > 20
    assert len(fields) == zpl.count("^FD") - 1  # all text fields matched (the other is the barcode)
    for x, y, h, _w, width, lines, _align, _data in fields:
        assert lines == "1"
        assert int(x) + int(width) <= LABEL_WIDTH_DOTS
        assert int(y) + int(h) <= LABEL_HEIGHT_DOTS
    assert "..." in zpl


def test_long_street_wraps_onto_two_lines_then_is_cut() -> None:
    street = "Náměstí Přemysla Otakara II. 1234/56, Příliš žluťoučký kůň úpěl ďábelské ódy a ještě dál a dál"
    zpl = label(replace(ATHENS, name="Jan Novák", street=street, country="CZ", postal_code="110 00",
                        city="Praha 1"))
    lines = [data for *_, data in FIELD.findall(zpl) if data.startswith(("Náměstí", "1234/56", "Příliš"))
             or "ódy" in data]
    assert 1 < len(lines) <= 2
    assert lines[-1].endswith("...")
    assert " ".join(lines).replace("...", "").split() == street.split()[: len(" ".join(lines).split())]


def test_a_single_word_longer_than_the_line_is_broken() -> None:
    word = "X" * 200
    zpl = label(replace(ATHENS, name="Jan", street=word, country="CZ", postal_code="110 00", city="Praha"))
    parts = [data for *_, data in FIELD.findall(zpl) if data.startswith("X")]
    assert len(parts) == 2 and parts[1].endswith("...")


def test_control_characters_in_text_become_spaces() -> None:
    zpl = label(replace(ATHENS, name="Jan\nNovák\t\x1b[31m", country="CZ", postal_code="110 00", city="Praha"))
    assert "^FDJan Novák [31m^FS" in zpl
