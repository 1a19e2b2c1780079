"""Label printers: a byte transport chosen by URL, plus the Zebra ``~HS`` status parser.

The printer driver only moves bytes; building ZPL is someone else's pure function
(compose encoders with transports, don't inherit one from the other).

``~HS`` (Host Status Return, ZPL II Programming Guide) answers with three strings, each
``<STX>...<ETX><CR><LF>``::

    string 1: aaa,b,c,dddd,eee,f,g,h,iii,j,k,l
              b = paper out, c = pause, dddd = label length (dots), eee = formats in
              receive buffer, f = buffer full, g = comm. diagnostics, h = partial format,
              iii = unused, j = corrupt RAM, k = under temperature, l = over temperature
    string 2: mmm,n,o,p,q,r,s,t,uuuuuuuu,v,www
              mmm = function settings, n = unused, o = head up (open), p = ribbon out,
              q = thermal transfer, r = print mode, s = print width mode, t = label
              waiting, uuuuuuuu = labels remaining in batch, v = format while printing,
              www = graphics stored
    string 3: xxxx,y
              xxxx = password, y = static RAM installed
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

from drivers._url import parse_device_url
from drivers.errors import DeviceError, UnsupportedURL

if TYPE_CHECKING:
    from drivers.transport.cups import CupsTarget
    from drivers.transport.file import FileTarget
    from drivers.transport.serialport import SerialSettings
    from drivers.transport.tcp import TcpTarget

    PrinterTarget: TypeAlias = TcpTarget | FileTarget | CupsTarget | SerialSettings

__all__ = [
    "HOST_STATUS_QUERY",
    "LabelPrinter",
    "PrinterStatus",
    "host_status_complete",
    "open_printer",
    "parse_host_status",
    "parse_printer_url",
]

HOST_STATUS_QUERY = b"~HS"
STX = 0x02
ETX = 0x03
_FRAMED = re.compile(r"\x02([^\x02\x03]*)\x03")


@dataclass(frozen=True)
class PrinterStatus:
    """What a Zebra says about itself in reply to ``~HS``."""

    paper_out: bool
    paused: bool
    head_open: bool
    ribbon_out: bool
    labels_remaining: int | None
    """Labels remaining in the current batch (string 2, ``uuuuuuuu``); None if not reported."""
    raw: str
    """The reply as received (decoded as latin-1), for logs and support."""

    @property
    def ready(self) -> bool:
        return not (self.paper_out or self.paused or self.head_open or self.ribbon_out)


def host_status_complete(reply: bytes | bytearray) -> bool:
    """True once a ``~HS`` reply holds its three STX...ETX strings."""
    return reply.count(ETX) >= 3


def _flag(fields: list[str], index: int, what: str, reply: str) -> bool:
    if index >= len(fields) or fields[index] == "":
        return False
    value = fields[index]
    if value not in ("0", "1"):
        raise DeviceError(f"~HS reply: {what} flag is {value!r}, expected 0 or 1: {reply!r}")
    return value == "1"


def _number(fields: list[str], index: int) -> int | None:
    if index >= len(fields):
        return None
    value = fields[index]
    return int(value) if value.isascii() and value.isdigit() else None


def parse_host_status(reply: bytes) -> PrinterStatus:
    """Parse a Zebra ``~HS`` reply. Tolerant of missing CR LF, surrounding noise, a missing
    string 2/3 (flags then read as clear) and of several replies (the last one wins).

    Raises DeviceError when there is no usable string 1 (paper-out and pause flags).
    """
    text = bytes(reply).decode("latin-1")
    strings = _FRAMED.findall(text)
    if not strings:  # no STX/ETX framing at all: fall back to lines
        strings = [line.strip("\x02\x03 ") for line in re.split(r"[\r\n]+", text)]
        strings = [s for s in strings if s]
    if len(strings) > 3:
        strings = strings[-3:]
    if not strings:
        raise DeviceError(f"empty ~HS reply: {text!r}")
    first = [f.strip() for f in strings[0].split(",")]
    if len(first) < 3:
        raise DeviceError(f"~HS reply not understood (string 1 has {len(first)} fields): {text!r}")
    second = [f.strip() for f in strings[1].split(",")] if len(strings) > 1 else []
    return PrinterStatus(
        paper_out=_flag(first, 1, "paper out", text),
        paused=_flag(first, 2, "pause", text),
        head_open=_flag(second, 2, "head up", text),
        ribbon_out=_flag(second, 3, "ribbon out", text),
        labels_remaining=_number(second, 8),
        raw=text,
    )


class LabelPrinter(Protocol):
    """A byte sink for print jobs (ZPL). Failures raise DeviceError."""

    url: str

    def send(self, data: bytes) -> None:
        """Send one whole job (one or more labels)."""
        ...

    def status(self) -> PrinterStatus | None:
        """Ask the printer (``~HS``); None where the transport cannot answer (file://, cups://)."""
        ...

    def close(self) -> None: ...


_PRINTER_URL_FORMS = "tcp://host:9100, file:///dir/, cups://Queue or serial:///dev/ttyUSB0?baud=9600"


def parse_printer_url(url: str) -> PrinterTarget:
    """Check a printer URL without opening anything (no socket, port, file or CUPS call).

    Returns what :func:`open_printer` will open: a ``TcpTarget``, ``FileTarget``, ``CupsTarget``
    or ``SerialSettings``. :func:`open_printer` starts with this very function, so a URL this
    accepts is never refused by ``open_printer`` for its form: only for the device itself
    (unreachable, missing port, unknown CUPS queue...). Raises UnsupportedURL with the reason.
    """
    unsupported = f"printer URL {url!r} is not supported: use {_PRINTER_URL_FORMS}"
    if not isinstance(url, str) or "://" not in url:
        raise UnsupportedURL(unsupported)
    dev = parse_device_url(url)  # its own reason for a malformed one (bad IPv6 literal, repeated option)
    if dev.scheme == "tcp":
        from drivers.transport.tcp import parse_tcp_url

        return parse_tcp_url(dev)
    if dev.scheme == "file":
        from drivers.transport.file import parse_file_url

        return parse_file_url(dev)
    if dev.scheme == "cups":
        from drivers.transport.cups import parse_cups_url

        return parse_cups_url(dev)
    if dev.scheme == "serial":
        from drivers.transport.serialport import parse_serial_url

        return parse_serial_url(dev)
    raise UnsupportedURL(unsupported)


def open_printer(url: str, timeout_s: float = 5.0) -> LabelPrinter:
    """Open a label printer by URL.

    * ``tcp://host:9100`` — raw TCP (Zebra raw port, 9100 by default); one connection per job
      or status query.
    * ``file:///some/dir/`` — each job is a new file ``job-0001.zpl``, ``job-0002.zpl``...;
      ``file:///path/labels.zpl`` appends every job to that one file.
    * ``cups://QueueName`` — a raw CUPS queue, through the ``zebra`` package (``lpr -o raw``).
    * ``serial:///dev/ttyUSB0?baud=9600`` — through pyserial (options: baud, bytesize, parity,
      stopbits).

    The URL is checked by :func:`parse_printer_url` first. Raises UnsupportedURL for malformed
    URLs and DeviceError when the device cannot be opened.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    from drivers.transport.cups import CupsPrinter, CupsTarget
    from drivers.transport.file import FilePrinter, FileTarget
    from drivers.transport.serialport import SerialPrinter, SerialSettings
    from drivers.transport.tcp import TcpPrinter, TcpTarget

    target = parse_printer_url(url)
    if isinstance(target, TcpTarget):
        return TcpPrinter.open(target, timeout_s=timeout_s)
    if isinstance(target, FileTarget):
        return FilePrinter.open(target)
    if isinstance(target, CupsTarget):
        return CupsPrinter.open(target)
    if isinstance(target, SerialSettings):
        return SerialPrinter.open(target, timeout_s=timeout_s)
    raise AssertionError(f"unhandled printer target {target!r}")  # pragma: no cover
