"""``serial:///dev/ttyACM0?baud=9600``: scanners and printers on a serial / USB-CDC port (pyserial)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import serial

from drivers._url import DeviceURL, int_param, serial_port_path
from drivers.errors import DeviceError, UnsupportedURL
from drivers.printer import HOST_STATUS_QUERY, PrinterStatus, host_status_complete, parse_host_status
from drivers.scanner import Scan, ScanFramer, decode_scan

__all__ = [
    "BAUDRATES",
    "SERIAL_OPTIONS",
    "SerialPrinter",
    "SerialScanner",
    "SerialSettings",
    "open_serial_port",
    "parse_serial_url",
]

SERIAL_OPTIONS = ("baud", "baudrate", "bytesize", "parity", "stopbits")
SCANNER_OPTIONS = (*SERIAL_OPTIONS, "idle_ms")
# the standard rates pyserial knows (50 ... 4000000); anything else is a typo, not a device setting
BAUDRATES: tuple[int, ...] = tuple(serial.Serial.BAUDRATES)
_PARITY = {
    "N": serial.PARITY_NONE,
    "E": serial.PARITY_EVEN,
    "O": serial.PARITY_ODD,
    "M": serial.PARITY_MARK,
    "S": serial.PARITY_SPACE,
}
_PARITY_NAMES = {"NONE": "N", "EVEN": "E", "ODD": "O", "MARK": "M", "SPACE": "S"}
_STOPBITS = {"1": serial.STOPBITS_ONE, "1.5": serial.STOPBITS_ONE_POINT_FIVE, "2": serial.STOPBITS_TWO}
_MAX_IDLE_MS = 60_000
# How long one blocking port read may last; bounds deadline overshoot and close latency.
POLL_S = 0.05


@dataclass(frozen=True)
class SerialSettings:
    """A checked ``serial://`` URL: everything needed to open the port, nothing opened yet."""

    url: str
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    """One of N, E, O, M, S."""
    stopbits: str = "1"
    """One of 1, 1.5, 2."""
    idle_s: float | None = None
    """Scanners only (``idle_ms``): also end a frame after this long without a byte."""


def parse_serial_url(dev: DeviceURL, *, scanner: bool = False) -> SerialSettings:
    """Check a ``serial://`` URL without touching the port; raises UnsupportedURL.

    Options: ``baud`` (or ``baudrate``; a standard rate, 9600 by default), ``bytesize`` (5-8),
    ``parity`` (N/E/O/M/S or none/even/odd/mark/space), ``stopbits`` (1, 1.5, 2) and, for a
    scanner, ``idle_ms``. Unknown options are refused.
    """
    dev.allow_only(*(SCANNER_OPTIONS if scanner else SERIAL_OPTIONS))
    port = serial_port_path(dev)
    if "baud" in dev.params and "baudrate" in dev.params:
        raise UnsupportedURL(f"{dev.url!r}: give baud or baudrate, not both")
    baud_name = "baudrate" if "baudrate" in dev.params else "baud"
    baud = int_param(dev, baud_name, 9600, choices=BAUDRATES, what="a standard serial rate")
    bytesize = int_param(dev, "bytesize", 8, choices=(5, 6, 7, 8), what="a serial byte size")
    raw_parity = dev.params.get("parity", "N").strip().upper()
    parity = _PARITY_NAMES.get(raw_parity, raw_parity)
    if parity not in _PARITY:
        raise UnsupportedURL(
            f"option parity={dev.params['parity']!r} in {dev.url!r} must be one of N, E, O, M, S"
        )
    stopbits = dev.params.get("stopbits", "1")
    if stopbits not in _STOPBITS:
        raise UnsupportedURL(f"option stopbits={stopbits!r} in {dev.url!r} must be 1, 1.5 or 2")
    idle_s = None
    if scanner and "idle_ms" in dev.params:
        idle_s = int_param(dev, "idle_ms", 1, maximum=_MAX_IDLE_MS) / 1000
    return SerialSettings(
        url=dev.url, port=port, baudrate=baud, bytesize=bytesize, parity=parity, stopbits=stopbits,
        idle_s=idle_s,
    )


def open_serial_port(
    settings: SerialSettings, *, timeout_s: float | None, write_timeout_s: float | None
) -> serial.Serial:
    """Open the port ``settings`` name (raw mode: pyserial sets termios; input is flushed on open)."""
    try:
        return serial.Serial(
            port=settings.port,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=_PARITY[settings.parity],
            stopbits=_STOPBITS[settings.stopbits],
            timeout=timeout_s,
            write_timeout=write_timeout_s,
            # flock the port: two processes reading one scanner would each get half the scans
            exclusive=True if os.name == "posix" else None,
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise DeviceError(f"cannot open serial port {settings.port} ({settings.url}): {exc}") from exc


class SerialScanner:
    """A scanner on a serial port. :meth:`read` runs in the caller's thread (a worker)."""

    def __init__(self, url: str, port: serial.Serial, *, idle_s: float | None = None) -> None:
        self.url = url
        self._port = port
        self._idle_s = idle_s
        self._framer = ScanFramer()
        self._frames: deque[bytes] = deque()
        self._last_rx = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, settings: SerialSettings) -> SerialScanner:
        """Open a port checked by ``parse_serial_url(dev, scanner=True)``."""
        port = open_serial_port(settings, timeout_s=POLL_S, write_timeout_s=None)
        return cls(settings.url, port, idle_s=settings.idle_s)

    def read(self, timeout_s: float | None = None) -> Scan | None:
        deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
        with self._lock:
            while True:
                if self._closed:
                    raise DeviceError(f"scanner {self.url} is closed")
                if self._frames:
                    return decode_scan(self._frames.popleft())
                try:
                    waiting = self._port.in_waiting
                    if waiting:
                        self._ingest(self._port.read(waiting))
                        continue
                    now = time.monotonic()
                    if (
                        self._idle_s is not None
                        and self._framer.pending
                        and now - self._last_rx >= self._idle_s
                    ):
                        frame = self._framer.flush()
                        if frame is not None:
                            self._frames.append(frame)
                        continue
                    if deadline is not None and now >= deadline:
                        return None
                    self._ingest(self._port.read(1))  # blocks for at most POLL_S
                except (serial.SerialException, OSError) as exc:
                    raise DeviceError(f"scanner {self.url} failed (unplugged?): {exc}") from exc

    def _ingest(self, chunk: bytes) -> None:
        if chunk:
            self._last_rx = time.monotonic()
            self._frames.extend(self._framer.feed(chunk))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(serial.SerialException, OSError):
            self._port.cancel_read()  # wake a read() blocked in another thread
        with self._lock:
            self._port.close()

    def __repr__(self) -> str:
        return f"SerialScanner({self.url!r})"


class SerialPrinter:
    """A label printer on a serial port; ``~HS`` works over serial as over TCP."""

    def __init__(self, url: str, port: serial.Serial, *, timeout_s: float) -> None:
        self.url = url
        self._port = port
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, settings: SerialSettings, *, timeout_s: float) -> SerialPrinter:
        """Open a port checked by :func:`parse_serial_url`."""
        port = open_serial_port(settings, timeout_s=POLL_S, write_timeout_s=timeout_s)
        return cls(settings.url, port, timeout_s=timeout_s)

    def send(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send() takes bytes, got {type(data).__name__}")
        with self._lock:
            self._check_open()
            try:
                self._port.write(data)
                self._port.flush()
            except serial.SerialTimeoutException:
                raise DeviceError(f"printer {self.url}: write timed out after {self.timeout_s:g} s") from None
            except (serial.SerialException, OSError) as exc:
                raise DeviceError(f"printer {self.url}: write failed: {exc}") from exc

    def status(self) -> PrinterStatus:
        with self._lock:
            self._check_open()
            reply = bytearray()
            try:
                self._port.reset_input_buffer()
                self._port.write(HOST_STATUS_QUERY)
                deadline = time.monotonic() + self.timeout_s
                while not host_status_complete(reply):
                    if time.monotonic() >= deadline:
                        raise DeviceError(
                            f"printer {self.url} sent no complete ~HS reply within {self.timeout_s:g} s "
                            f"(got {bytes(reply)!r})"
                        )
                    reply += self._port.read(max(1, self._port.in_waiting))
            except serial.SerialTimeoutException:
                raise DeviceError(f"printer {self.url}: write timed out after {self.timeout_s:g} s") from None
            except (serial.SerialException, OSError) as exc:
                raise DeviceError(f"printer {self.url}: status query failed: {exc}") from exc
        return parse_host_status(bytes(reply))

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(f"printer {self.url} is closed")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._port.close()

    def __repr__(self) -> str:
        return f"SerialPrinter({self.url!r})"
