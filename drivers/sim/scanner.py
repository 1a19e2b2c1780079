"""A simulated serial barcode scanner: writes real scanner framing into a pty.

The station opens the slave end through ``serial:///dev/pts/N`` exactly like a USB-CDC
scanner, so the whole path (pyserial, termios raw mode, framing, decoding) is exercised.
"""

from __future__ import annotations

import os
import threading
import tty
from collections.abc import Mapping
from types import TracebackType

from biip import ParseError
from biip.gs1_application_identifiers import GS1ApplicationIdentifier

__all__ = ["SimulatedScanner"]

GS = "\x1d"


def _encode(text: str) -> bytes:
    try:
        return text.encode("latin-1")  # what Code 128 and most 1D symbologies carry
    except UnicodeEncodeError:
        return text.encode("utf-8")  # 2D codes (QR, DataMatrix) are commonly UTF-8


def gtin_element(gtin: str) -> tuple[str, str]:
    """(AIM symbology id, data) a real scanner sends for a GTIN printed as EAN/UPC or ITF-14."""
    if not (gtin.isascii() and gtin.isdigit() and len(gtin) in (8, 12, 13, 14)):
        raise ValueError(f"a GTIN has 8, 12, 13 or 14 digits, got {gtin!r}")
    if len(gtin) == 14:
        if gtin[0] != "0":
            return "]I0", gtin  # a true GTIN-14 (case code) is printed as ITF-14
        if gtin.startswith("000000"):
            return "]E4", gtin[6:]  # GTIN-8 in EAN-8
        return "]E0", gtin[1:]  # GTIN-13, or GTIN-12 as 13 digits with a leading 0
    if len(gtin) == 8:
        return "]E4", gtin
    if len(gtin) == 12:
        return "]E0", "0" + gtin  # UPC-A is transmitted as EAN-13 with a leading 0
    return "]E0", gtin


def gs1_element_string(ais: Mapping[str, str]) -> str:
    """Concatenate GS1 element strings: predefined-length AIs (01, 17, ...) first, variable
    ones after, a GS only after a variable-length AI that is followed by another AI."""
    fixed: list[str] = []
    variable: list[str] = []
    for ai, value in ais.items():
        try:
            meta = GS1ApplicationIdentifier.extract(ai)
        except ParseError:
            raise ValueError(f"unknown GS1 application identifier {ai!r}") from None
        if meta.ai != ai:
            raise ValueError(f"{ai!r} is not a GS1 application identifier (did you mean {meta.ai!r}?)")
        (variable if meta.separator_required else fixed).append(ai + value)
    return "".join(fixed) + GS.join(variable)


class SimulatedScanner:
    """A pty pair; the test (or demo) writes scans, the station reads the slave end."""

    def __init__(self, *, aim: bool = True, terminator: bytes = b"\r", baud: int = 9600) -> None:
        self.aim = aim
        self.terminator = terminator
        self._master, self._slave = os.openpty()
        # Raw from the start, like a USB-CDC device: no echo, no CR->LF mapping before the
        # reader opens the port (the reader sets raw mode itself, too).
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self.url = f"serial://{self.path}?baud={baud}"
        self._lock = threading.Lock()
        self._closed = False

    def send_raw(self, data: bytes) -> None:
        """Write exactly ``data`` (no AIM id, no terminator added)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("SimulatedScanner is closed")
            view = memoryview(bytes(data))
            while view:
                written = os.write(self._master, view)
                view = view[written:]

    def _send(self, symbology: str, data: str) -> None:
        prefix = symbology if self.aim else ""
        self.send_raw(_encode(prefix + data) + self.terminator)

    def scan_gtin(self, gtin: str) -> None:
        """Scan a GTIN as printed on goods: EAN-13/UPC-A (``]E0``), EAN-8 (``]E4``) or ITF-14 (``]I0``)."""
        self._send(*gtin_element(gtin))

    def scan_gs1(self, ais: Mapping[str, str], *, symbology: str = "]C1") -> None:
        """Scan GS1 element strings, e.g. ``{"01": "07310001234568", "17": "271231", "10": "L1"}``,
        as GS1-128 (or ``symbology="]d2"`` for GS1 DataMatrix, ``"]Q3"`` for GS1 QR)."""
        self._send(symbology, gs1_element_string(ais))

    def scan_text(self, text: str, *, symbology: str = "]C0") -> None:
        """Scan a plain Code 128 barcode, e.g. an order or tote number."""
        self._send(symbology, text)

    def close(self) -> None:
        """Unplug: a reader of the slave end sees the device disappear."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._master)
            os.close(self._slave)

    def __enter__(self) -> SimulatedScanner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SimulatedScanner({self.url!r})"
