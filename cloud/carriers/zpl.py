"""A 4x6 in shipping label in ZPL II for 203 dpi Zebra printers. Pure: builds a ``str``.

Layout (dots, 812 x 1218): header (carrier, service) / sender / recipient / reference + weight /
Code 128 of the tracking number / CN22 customs block for parcels that cross a customs border / footer.

Every variable text goes into a ``^FH``-escaped ``^FB`` field (see :func:`escape_field`), so a customer
called ``Evil ^XZ~JR Corp`` prints as text instead of ending the label or resetting the printer.
Text is UTF-8 (``^CI28``). Lines are fitted with a conservative width estimate of the font, wrapped on
words and cut with "..." so they never run past their box.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

import pycountry

from cloud.carriers.base import Shipment
from cloud.routing import needs_customs

__all__ = [
    "LABEL_HEIGHT_DOTS",
    "LABEL_WIDTH_DOTS",
    "UNICODE_FONT",
    "barcode_module_width",
    "country_name",
    "escape_field",
    "render_label",
]

LABEL_WIDTH_DOTS = 812  # 4 in at 203 dpi
LABEL_HEIGHT_DOTS = 1218  # 6 in at 203 dpi
HEX_INDICATOR = "_"  # the ^FH default
#: TrueType font used (through ^A@) for text font 0 cannot print, e.g. Greek or Cyrillic. Link-OS
#: printers carry it resident; other printers need it downloaded once.
UNICODE_FONT = "E:TT0003M_.TTF"

_MARGIN = 24
_CONTENT_W = LABEL_WIDTH_DOTS - 2 * _MARGIN
_ELLIPSIS = "..."

# Advance widths of font 0 (CG Triumvirate Bold Condensed) as a fraction of the ^A width parameter,
# measured on a render; characters not listed count as _FONT0_DEFAULT. Estimates are padded by _SAFETY.
_FONT0_WIDTHS = {
    **dict.fromkeys("fijlrtIJ.,:;'!|/()[]` ", 0.34),
    **dict.fromkeys("abcdeghknopqsuvxyzL0123456789#$+*?_ET", 0.5),
    **dict.fromkeys("mwMW@%&æÆœŒ", 0.84),
    "-": 0.8,  # rendered wide
}
_FONT0_DEFAULT = 0.62
# A fallback TrueType face may be monospaced and wider than font 0: budget it per character.
_UNICODE_ADVANCE = 1.32
_UNICODE_W_SCALE = 0.48  # narrower ^A@ width parameter so such text is about as wide as font 0
_SAFETY = 1.08
# Latin characters font 0 can print; anything else switches the field to UNICODE_FONT.
_FONT0_EXTRA = frozenset("‘’‚“”„–—…€•™")

_TRACKING_RE = re.compile(r"[0-9A-Za-z-]{1,48}")


# --- escaping --------------------------------------------------------------------------------------
def _hex(ch: str) -> str:
    return "".join(f"{HEX_INDICATOR}{b:02X}" for b in ch.encode("utf-8"))


def escape_field(text: str) -> str:
    """Make ``text`` safe as the data of a ``^FH^FB`` field (hex indicator ``_``, ``^CI28``).

    ``^``, ``~``, the indicator ``_`` and every control character become ``_XX`` hex bytes, so none of
    them can start a command (the printer decodes them only as field data). ``\\`` is doubled, the
    ``^FB`` escape for a backslash, so a ``\\&`` in the text cannot become a line break. Everything else,
    non-Latin letters and emoji included, stays UTF-8. Control characters still reach the field as bytes
    (a line feed would break an ``^FB`` line): :func:`render_label` turns them into spaces first.

    Note: zpl-renderer-js 3.4 does not implement ``\\\\`` -> ``\\`` in ``^FB``: it shows two backslashes,
    and ``\\\\&`` as a backslash and a line break. Zebra's ZPL manual defines ``\\\\`` as one backslash.
    """
    out: list[str] = []
    for ch in text:
        if ch in "^~" or ch == HEX_INDICATOR or unicodedata.category(ch) == "Cc":
            out.append(_hex(ch))
        elif ch == "\\":
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


def _clean(text: str | None) -> str:
    """One printable line: control characters and line/paragraph separators become spaces."""
    if not text:
        return ""
    chars = (" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    return " ".join("".join(chars).split())


# --- fitting text ----------------------------------------------------------------------------------
def _font0_can_print(text: str) -> bool:
    return all(ord(c) < 0x250 or c in _FONT0_EXTRA for c in text)


def _font_width(text: str, w: int) -> tuple[bool, int]:
    """(needs UNICODE_FONT, the ^A width parameter to use) for ``text`` at nominal width ``w``."""
    if _font0_can_print(text):
        return False, w
    return True, max(10, round(w * _UNICODE_W_SCALE))


def _text_width(text: str, w: int, unicode_font: bool) -> float:
    if unicode_font:
        return len(text) * w * _UNICODE_ADVANCE * _SAFETY
    return sum(_FONT0_WIDTHS.get(c, _FONT0_DEFAULT) for c in text) * w * _SAFETY


def _fits(text: str, w: int, width: int, unicode_font: bool) -> bool:
    return _text_width(text, w, unicode_font) <= width


def _cut(text: str, w: int, width: int, unicode_font: bool, *, force: bool = False) -> str:
    """``text`` cut to fit ``width`` dots, ending in an ellipsis if cut (or if ``force``)."""
    if not force and _fits(text, w, width, unicode_font):
        return text
    while text and not _fits(text.rstrip() + _ELLIPSIS, w, width, unicode_font):
        text = text[:-1]
    return text.rstrip() + _ELLIPSIS


def _wrap(text: str, w: int, width: int, max_lines: int, unicode_font: bool) -> list[str]:
    """Greedy word wrap into at most ``max_lines`` lines; if text is left over the last line is cut
    with an ellipsis. A word wider than a line is broken."""
    words = text.split(" ")
    lines: list[str] = []
    current = ""
    while words and len(lines) < max_lines:
        candidate = f"{current} {words[0]}" if current else words[0]
        if _fits(candidate, w, width, unicode_font):
            current = candidate
            words.pop(0)
        elif current:
            lines.append(current)
            current = ""
        else:
            n = max(1, len(words[0]) - 1)
            while n > 1 and not _fits(words[0][:n], w, width, unicode_font):
                n -= 1
            lines.append(words[0][:n])
            words[0] = words[0][n:]
    if current:
        lines.append(current)  # the loop only stops early right after appending a line
    if words:
        lines[-1] = _cut(f"{lines[-1]} {' '.join(words)}", w, width, unicode_font, force=True)
    return lines


class _Canvas:
    """Collects ZPL fields; every text field is a one-line ^FB so alignment and clipping are explicit."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self, x: int, y: int, text: str, *, h: int, w: int | None = None, width: int = _CONTENT_W,
             align: str = "L", reverse: bool = False) -> None:
        text = _clean(text)
        if not text:
            return
        unicode_font, w = _font_width(text, w or h)
        font = f"^A@N,{h},{w},{UNICODE_FONT}" if unicode_font else f"^A0N,{h},{w}"
        text = _cut(text, w, width, unicode_font)
        fr = "^FR" if reverse else ""
        self.parts.append(f"^FO{x},{y}{font}{fr}^FB{width},1,0,{align},0^FH^FD{escape_field(text)}^FS")

    def paragraph(self, x: int, y: int, text: str, *, h: int, max_lines: int, w: int | None = None,
                  width: int = _CONTENT_W, line_gap: int = 4) -> int:
        """Wrapped text, one ^FB per line; returns the number of lines used."""
        text = _clean(text)
        if not text:
            return 0
        unicode_font, fit_w = _font_width(text, w or h)
        lines = _wrap(text, fit_w, width, max_lines, unicode_font)
        for n, line in enumerate(lines):
            self.text(x, y + n * (h + line_gap), line, h=h, w=w, width=width)
        return len(lines)

    def box(self, x: int, y: int, width: int, height: int, thickness: int) -> None:
        self.parts.append(f"^FO{x},{y}^GB{width},{height},{thickness}^FS")

    def hline(self, y: int, thickness: int = 3) -> None:
        self.box(_MARGIN, y, _CONTENT_W, thickness, thickness)


# --- content helpers --------------------------------------------------------------------------------
_COUNTRY_NAMES = {"XK": "Kosovo"}  # user-assigned code, not in ISO 3166


def country_name(code: str) -> str:
    """English short name of an ISO alpha-2 country ("CZ" -> "Czechia"); the code itself if unknown."""
    code = code.upper()
    if code in _COUNTRY_NAMES:
        return _COUNTRY_NAMES[code]
    country = pycountry.countries.get(alpha_2=code)
    if country is None:
        return code
    return str(getattr(country, "common_name", None) or country.name)


def _code128_modules(data: str) -> int:
    """Modules of a Code 128 symbol in subset B (the longest encoding): start, data, check, stop."""
    return 11 * (len(data) + 2) + 13


def barcode_module_width(data: str, max_width: int = LABEL_WIDTH_DOTS) -> int:
    """Widest ^BY module width (2..4 dots) at which ``data`` plus 10-module quiet zones fits."""
    for module in (4, 3, 2):
        if (_code128_modules(data) + 20) * module <= max_width:
            return module
    raise ValueError(f"tracking number {data!r} is too long for a Code 128 on a 4 in label")


def _kg(weight_g: int) -> str:
    return f"{Decimal(weight_g) / 1000:.2f} kg"


def _money(amount: Decimal, currency: str) -> str:
    return f"{amount.quantize(Decimal('0.01'))} {currency}"


# Countries whose addresses put the postcode after the town.
_POSTCODE_AFTER_CITY = frozenset({"GB", "IE", "IM", "JE", "GG", "GI", "MT", "LV"})


def _city_line(postal_code: str, city: str, country: str) -> str:
    postal_code, city = _clean(postal_code), _clean(city)
    if country.upper() in _POSTCODE_AFTER_CITY:
        return f"{city} {postal_code}".strip()
    return f"{postal_code} {city}".strip()


def _totals(values: Iterable[tuple[Decimal, str]]) -> str:
    sums: dict[str, Decimal] = {}
    for amount, currency in values:
        sums[currency] = sums.get(currency, Decimal(0)) + amount
    return " + ".join(_money(v, c) for c, v in sorted(sums.items()))


def _printed(at: datetime) -> str:
    zone = at.tzname() if at.tzinfo else None
    return at.strftime("%Y-%m-%d %H:%M") + (f" {zone}" if zone else "")


# --- the label --------------------------------------------------------------------------------------
def render_label(
    shipment: Shipment, *, carrier_name: str, service: str, tracking_number: str, printed_at: datetime
) -> str:
    """One 4x6 in label (exactly one ^XA..^XZ) for ``shipment`` with ``tracking_number`` as Code 128.

    A CN22 block is added when the parcel crosses a customs border
    (:func:`cloud.routing.needs_customs`); ``ValueError`` if it does and ``shipment.customs`` is empty,
    or if the tracking number is not 1-48 characters of ``[0-9A-Za-z-]``.
    """
    if not _TRACKING_RE.fullmatch(tracking_number):
        raise ValueError(f"tracking number {tracking_number!r} must be 1-48 characters of [0-9A-Za-z-]")
    src, dst = shipment.ship_from, shipment.ship_to
    customs = needs_customs(src.country, dst.country, dest_postal_code=dst.postal_code,
                            origin_postal_code=src.postal_code)
    if customs and not shipment.customs:
        raise ValueError(f"{shipment.reference}: {src.country} -> {dst.country} needs customs items")

    c = _Canvas()
    x = _MARGIN
    # Header: carrier and service ------------------------------------------------------------ 20..104
    c.text(x, 30, carrier_name.upper(), h=48, w=44, width=480)
    c.box(532, 20, 256, 76, 76)
    c.text(532, 36, service.upper(), h=48, w=44, width=256, align="C", reverse=True)
    c.hline(108)
    # Sender ------------------------------------------------------------------------------ 116..206
    c.text(x, 120, "FROM", h=22, width=100)
    sender = " / ".join(dict.fromkeys(filter(None, (_clean(shipment.sender_name),
                                                     _clean(src.company or src.name)))))
    sx, sw = x + 90, _CONTENT_W - 90
    c.text(sx, 120, sender, h=26, w=24, width=sw)
    c.text(sx, 150, src.street, h=26, w=24, width=sw)
    c.text(sx, 180, f"{_city_line(src.postal_code, src.city, src.country)}, {country_name(src.country)}",
           h=26, w=24, width=sw)
    c.hline(214)
    # Recipient --------------------------------------------------------------------------- 222..596
    c.text(x, 226, "TO", h=30, width=100)
    y = 262
    c.text(x, y, dst.name, h=50, w=46)
    y += 56
    if dst.company:
        c.text(x, y, dst.company, h=40, w=36)
        y += 46
    y += 46 * c.paragraph(x, y, dst.street, h=42, w=38, max_lines=2)
    c.text(x, y + 4, _city_line(dst.postal_code, dst.city, dst.country), h=62, w=58)
    y += 74
    c.text(x, y, country_name(dst.country).upper(), h=44, w=42, width=430)
    if dst.phone:
        c.text(x + 430, y + 12, f"Tel. {dst.phone}", h=28, w=26, width=_CONTENT_W - 430, align="R")
    # worst case: 262 + 56 + 46 + 92 + 74 + 44 = 574 < 606
    c.hline(606, thickness=4)
    # Reference and weight ---------------------------------------------------------------- 616..666
    c.text(x, 620, f"REF {shipment.reference}", h=40, w=36, width=500)
    c.text(x + 500, 620, _kg(shipment.weight_g), h=40, w=36, width=_CONTENT_W - 500, align="R")
    # Barcode: Code 128 (subset B) of the tracking number with its interpretation line ----- 680..930
    module = barcode_module_width(tracking_number)
    symbol_w = _code128_modules(tracking_number) * module
    bx = (LABEL_WIDTH_DOTS - symbol_w) // 2
    c.parts.append(f"^FO{bx},680^BY{module},3,190^BCN,190,Y,N,N^FD{tracking_number}^FS")
    c.hline(938)
    # Customs (CN22) or the tracking number in words --------------------------------------- 946..1176
    if customs:
        _cn22(c, shipment, y=946)
    else:
        c.text(x, 960, "Tracking", h=24, width=200)
        c.text(x, 990, tracking_number, h=44, w=40)
    # Footer -------------------------------------------------------------------------------- 1180..1206
    c.hline(1178, thickness=2)
    c.text(x, 1186, f"Printed {_printed(printed_at)}", h=22, w=20, width=_CONTENT_W // 2)
    c.text(x + _CONTENT_W // 2, 1186, f"{service} / {shipment.reference}", h=22, w=20,
           width=_CONTENT_W // 2, align="R")
    return "^XA^CI28" + f"^PW{LABEL_WIDTH_DOTS}^LL{LABEL_HEIGHT_DOTS}^LH0,0" + "".join(c.parts) + "^XZ"


_CN22_ROWS = 5
# column x offsets and widths (dots) of the CN22 table
_COLS = {"desc": (0, 290), "qty": (294, 50), "hs": (366, 134), "origin": (504, 70), "value": (578, 186)}


def _cn22(c: _Canvas, shipment: Shipment, *, y: int) -> None:
    x = _MARGIN
    c.text(x, y, "CUSTOMS DECLARATION CN 22", h=28, w=26, width=520)
    if shipment.incoterm:
        c.text(x + 520, y, f"Incoterm {shipment.incoterm}", h=28, w=26, width=_CONTENT_W - 520, align="R")
    y += 34
    for key, title in (("desc", "Description"), ("qty", "Qty"), ("hs", "HS code"), ("origin", "Origin"),
                       ("value", "Value")):
        dx, dw = _COLS[key]
        c.text(x + dx, y, title, h=20, width=dw, align="R" if key in ("qty", "value") else "L")
    y += 24
    c.box(x, y, _CONTENT_W, 2, 2)
    y += 6
    items = list(shipment.customs)
    shown = items if len(items) <= _CN22_ROWS else items[: _CN22_ROWS - 1]
    for item in shown:
        row = {"desc": item.description, "qty": str(item.qty), "hs": item.hs_code, "origin": item.origin,
               "value": _money(item.value, item.currency)}
        for key, value in row.items():
            dx, dw = _COLS[key]
            c.text(x + dx, y, value, h=24, w=22, width=dw, align="R" if key in ("qty", "value") else "L")
        y += 26
    if len(shown) < len(items):
        c.text(x, y, f"+ {len(items) - len(shown)} more items, see the commercial invoice", h=24, w=22)
        y += 26
    c.box(x, y + 2, _CONTENT_W, 2, 2)
    y += 8
    total = _totals((i.value, i.currency) for i in items)
    qty = sum(i.qty for i in items)
    c.text(x, y, f"Total {qty} item(s), {_kg(shipment.weight_g)}", h=26, w=24, width=300)
    value_text, value_w = f"Total value {total}", _CONTENT_W - 300
    w = 24 if _fits(value_text, 24, value_w, unicode_font=False) else 20  # several currencies
    c.text(x + 300, y, value_text, h=26, w=w, width=value_w, align="R")
