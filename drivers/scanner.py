"""Barcode scanners: frame the byte stream, decode each scan (AIM id, GTIN, GS1), open by URL.

The pure part (:class:`ScanFramer`, :func:`decode_scan`) knows nothing about ports;
:func:`open_scanner` picks a byte transport by URL scheme (``serial://`` for now).

Decoding rules, in short:

* An AIM symbology identifier (``]`` + code char + modifier, e.g. ``]E0``) says what was
  scanned. GS1 carriers (``]C1`` GS1-128, ``]e0`` DataBar, ``]d2`` DataMatrix, ``]Q3`` QR,
  ``]J1`` DotCode) are parsed as GS1 element strings; EAN/UPC (``]E0``/``]E3``/``]E4``)
  and ITF (``]I0``/``]I1``) as GTINs. Broken data in these gets ``error`` set.
* Without an AIM id (keyboard-wedge style) 8/12/13/14 digits are a GTIN, and data
  that starts like a GS1 element string (AI 00/01/02, or containing GS) is GS1.
* Anything else, e.g. ``]C0ACME-10001``, is plain text with ``error=None``: it may be an
  order or tote barcode, and the station decides.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import biip
from biip import ParseConfig, ParseError
from biip.gs1_element_strings import GS1ElementStrings
from biip.gtin import Gtin
from biip.upc import Upc

from drivers._url import parse_device_url
from drivers.errors import UnsupportedURL

if TYPE_CHECKING:
    from drivers.transport.serialport import SerialSettings

__all__ = ["Scan", "ScanFramer", "Scanner", "decode_scan", "open_scanner", "parse_scanner_url"]

GS = "\x1d"
_TERMINATOR = re.compile(rb"\r\n|\r|\n")
# Control bytes a scanner may emit before the data (power-up noise): C0 controls except
# GS (FNC1 of an unprefixed GS1 message), CR/LF (terminators, handled separately), DEL, 0xFF.
_JUNK = bytes(b for b in range(0x20) if b not in (0x1D, 0x0D, 0x0A)) + b"\x7f\xff"
_AIM = re.compile(r"\][A-Za-z][0-9A-Za-z]")
_GTIN_LENGTHS = (8, 12, 13, 14)
# Symbology code chars + modifiers (ISO/IEC 15424, GS1 General Specifications 5.1.2).
_GS1_MESSAGE_SYMBOLOGIES = frozenset({"C1", "e0", "e1", "e2", "d2", "Q3", "J1"})
_EAN_UPC = frozenset({"E0", "E3", "E4"})
_ITF = frozenset({"I0", "I1"})
_UNPREFIXED_GS1 = re.compile(r"(00\d{18}|0[12]\d{14})")
_PARSE_CONFIG = ParseConfig()


@dataclass(frozen=True)
class Scan:
    """One decoded scan. ``error`` is set for data that claims to be a GTIN/GS1 but is broken."""

    raw: bytes
    """The frame as received, without terminator and without leading junk bytes."""
    text: str
    """The data without the AIM prefix; GS (``\\x1d``) characters are kept."""
    symbology: str | None
    """AIM symbology identifier such as ``"]E0"``, ``"]C1"``, ``"]d2"``, ``"]I0"``; None if absent."""
    gtin: str | None = None
    """GTIN-14, zero padded; only set when the check digit is valid."""
    lot: str | None = None
    """GS1 AI (10) batch/lot."""
    expiry: datetime.date | None = None
    """GS1 AI (17) expiration date; day ``00`` means the last day of that month."""
    sscc: str | None = None
    """GS1 AI (00) serial shipping container code (18 digits)."""
    error: str | None = None
    """Human readable reason this scan is unusable; None when fine."""

    @property
    def ok(self) -> bool:
        return self.error is None


def _strip_frame(frame: bytes) -> bytes:
    return bytes(frame).lstrip(_JUNK).rstrip(b"\r\n")


def _to_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Code 128 and most 1D symbologies carry ISO/IEC 8859-1.
        return raw.decode("latin-1")


def _looks_like_gtin(data: str) -> bool:
    return data.isascii() and data.isdigit() and len(data) in _GTIN_LENGTHS


def _gtin14(data: str) -> tuple[str | None, str | None]:
    """(GTIN-14, None) or (None, error)."""
    try:
        return Gtin.parse(data, config=_PARSE_CONFIG).as_gtin_14(), None
    except ParseError as exc:
        return None, str(exc)


def _decode_ean_upc(code: str, data: str) -> tuple[str | None, str | None]:
    if not data:
        return None, "EAN/UPC scan without data"
    if not (data.isascii() and data.isdigit()):
        return None, f"EAN/UPC data {data!r} is not all digits"
    if code == "E0" and len(data) == 8:
        # ]E0 with 8 digits is UPC-E (EAN-8 would be ]E4): expand to UPC-A first.
        try:
            data = Upc.parse(data, config=_PARSE_CONFIG).as_upc_a()
        except ParseError as exc:
            return None, str(exc)
    elif code == "E3" and len(data) in (15, 18):
        data = data[:13]  # EAN-13 / UPC-A followed by a 2- or 5-digit add-on
    elif len(data) not in _GTIN_LENGTHS:
        return None, f"EAN/UPC data {data!r} has {len(data)} digits, expected 8, 12 or 13"
    return _gtin14(data)


@dataclass(frozen=True)
class _GS1Fields:
    gtin: str | None = None
    lot: str | None = None
    expiry: datetime.date | None = None
    sscc: str | None = None
    error: str | None = None


def _fields_from(elements: GS1ElementStrings) -> _GS1Fields:
    lot = elements.get(ai="10")
    expiry = elements.get(ai="17")
    return _GS1Fields(
        lot=lot.value if lot is not None else None,
        expiry=expiry.date if expiry is not None else None,
    )


_BIIP_PATTERN_ERROR = re.compile(r"^Failed to match '(?P<value>.*)' with GS1 AI \((?P<ai>\d+)\) pattern '.*'\.?$", re.S)
_AI_NAMES = {"00": "SSCC", "01": "GTIN", "02": "GTIN", "10": "lot", "11": "production date",
             "15": "best-before date", "17": "expiry date", "21": "serial number"}


def _readable(error: str | None) -> str | None:
    """biip's message for a field that does not fit its AI quotes the AI's regular expression;
    a packer reads which field is wrong instead."""
    if error is None:
        return None
    m = _BIIP_PATTERN_ERROR.match(error)
    if m is None:
        return error
    ai = m["ai"]
    name = _AI_NAMES.get(ai, "field")
    return f"GS1 ({ai}) {name} is not valid in {m['value'][:40]!r}"


def _decode_gs1(data: str) -> _GS1Fields:
    """Parse GS1 element strings (or a GS1 Digital Link URI) with biip.

    biip never raises on bad input here; its ``*_error`` fields say what went wrong.
    """
    is_uri = data[:4].lower() == "http"
    if is_uri:
        result = biip.parse(data, config=_PARSE_CONFIG)  # biip tries Digital Link for http...
        if result.gs1_digital_link_uri is None:
            return _GS1Fields(error=_readable(result.gs1_digital_link_uri_error) or "not a GS1 Digital Link URI")
        fields = _fields_from(result.gs1_digital_link_uri.element_strings)
    else:
        # Prefix with the GS1-128 AIM id so biip parses exactly one thing: a GS1 message.
        result = biip.parse("]C1" + data, config=_PARSE_CONFIG)
        if result.gs1_message is None:
            return _GS1Fields(error=_readable(result.gs1_message_error) or "not a GS1 element string")
        fields = _fields_from(result.gs1_message.element_strings)
    error = _readable(result.gtin_error or result.sscc_error)
    return _GS1Fields(
        gtin=result.gtin.as_gtin_14() if result.gtin is not None else None,
        lot=fields.lot,
        expiry=fields.expiry,
        sscc=result.sscc.value if result.sscc is not None else None,
        error=error,
    )


def decode_scan(frame: bytes) -> Scan:
    """Decode one frame (as produced by :class:`ScanFramer`). Pure; never raises on bad data.

    Leading junk control bytes and a trailing CR/LF are tolerated and stripped.
    """
    raw = _strip_frame(frame)
    full = _to_text(raw)
    symbology: str | None = None
    data = full
    if _AIM.match(full):
        symbology, data = full[:3], full[3:]
    code = symbology[1:] if symbology is not None else None

    def scan(*, gtin: str | None = None, error: str | None = None, gs1: _GS1Fields | None = None) -> Scan:
        if gs1 is not None:
            return Scan(raw, data, symbology, gs1.gtin, gs1.lot, gs1.expiry, gs1.sscc, gs1.error)
        return Scan(raw, data, symbology, gtin=gtin, error=error)

    if code in _GS1_MESSAGE_SYMBOLOGIES:
        return scan(gs1=_decode_gs1(data))
    if code in _EAN_UPC:
        gtin, error = _decode_ean_upc(code, data)
        return scan(gtin=gtin, error=error)
    if code in _ITF or code is None:
        if _looks_like_gtin(data):
            gtin, error = _gtin14(data)
            return scan(gtin=gtin, error=error)
        if code is None:
            if data.startswith(GS):  # FNC1 in first position, sent by some wedge setups
                return scan(gs1=_decode_gs1(data.lstrip(GS)))
            if _UNPREFIXED_GS1.match(data) or (GS in data and data[:2].isdigit()):
                return scan(gs1=_decode_gs1(data))
            if data[:4].lower() == "http":
                link = _decode_gs1(data)
                if link.error is None:
                    return scan(gs1=link)
    # Not a GS1 carrier (e.g. ]C0 order number, ]Q1 plain QR): text for the station to judge.
    return scan()


class ScanFramer:
    """Split a scanner byte stream into frames. Pure and incremental.

    Terminators are CR, LF or CR LF (a CR LF pair is one terminator, even when split
    across two :meth:`feed` calls). Junk control bytes before the data are dropped
    (scanners send NULs at power-up); GS is kept, before and inside the data. Empty
    frames are never returned. A frame that grows past ``max_frame_bytes`` without a
    terminator is returned as it is, so a misconfigured scanner cannot grow memory
    without bound.
    """

    def __init__(self, *, max_frame_bytes: int = 8192) -> None:
        assert max_frame_bytes > 0
        self._max = max_frame_bytes
        self._buf = bytearray()
        self._after_cr = False

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        view = bytes(data)
        if self._after_cr and view[:1] == b"\n":
            view = view[1:]
        self._after_cr = False
        start = 0
        for match in _TERMINATOR.finditer(view):
            self._append(view[start : match.start()], frames)
            if self._buf:
                frames.append(bytes(self._buf))
                self._buf.clear()
            start = match.end()
            self._after_cr = match.group() == b"\r" and start == len(view)
        self._append(view[start:], frames)
        return frames

    def flush(self) -> bytes | None:
        """Return and forget a pending unterminated frame (for framing by idle time)."""
        if not self._buf:
            return None
        frame = bytes(self._buf)
        self._buf.clear()
        return frame

    @property
    def pending(self) -> int:
        """Bytes of the current, not yet terminated frame."""
        return len(self._buf)

    def _append(self, chunk: bytes, frames: list[bytes]) -> None:
        if not self._buf:
            chunk = chunk.lstrip(_JUNK)
        while chunk:
            room = self._max - len(self._buf)
            self._buf += chunk[:room]
            chunk = chunk[room:]
            if len(self._buf) >= self._max:
                frames.append(bytes(self._buf))
                self._buf.clear()
                chunk = chunk.lstrip(_JUNK)


class Scanner(Protocol):
    """A source of scans. Implementations: serial (``serial://``)."""

    url: str

    def read(self, timeout_s: float | None = None) -> Scan | None:
        """The next scan, or None when ``timeout_s`` passes first (None waits for ever).

        Raises DeviceError when the device fails or the scanner is closed.
        """
        ...

    def close(self) -> None: ...


def parse_scanner_url(url: str) -> SerialSettings:
    """Check a scanner URL without opening anything; returns what :func:`open_scanner` will open.

    ``serial:///dev/ttyACM0?baud=9600`` with options baud (a standard rate), bytesize, parity,
    stopbits and idle_ms; anything else raises UnsupportedURL with the reason. :func:`open_scanner`
    starts with this very function, so the two never disagree about a URL.
    """
    unsupported = f"scanner URL {url!r} is not supported: use serial:///dev/ttyACM0?baud=9600"
    if not isinstance(url, str) or "://" not in url:
        raise UnsupportedURL(unsupported)
    dev = parse_device_url(url)
    if dev.scheme != "serial":
        raise UnsupportedURL(unsupported)
    from drivers.transport.serialport import parse_serial_url

    return parse_serial_url(dev, scanner=True)


def open_scanner(url: str) -> Scanner:
    """Open a scanner by URL.

    ``serial:///dev/ttyACM0?baud=9600`` (options: baud, bytesize, parity, stopbits,
    idle_ms — frame by a pause of that length too, for scanners set up without a
    terminator). The URL is checked by :func:`parse_scanner_url` first. Raises
    UnsupportedURL / DeviceError.
    """
    settings = parse_scanner_url(url)
    from drivers.transport.serialport import SerialScanner

    return SerialScanner.open(settings)
