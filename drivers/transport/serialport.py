"""``serial:///dev/ttyACM0?baud=9600``: scanners and printers on a serial / USB-CDC port (pyserial)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque

import serial

from drivers._url import DeviceURL, int_param, serial_port_path
from drivers.errors import DeviceError, UnsupportedURL
from drivers.printer import HOST_STATUS_QUERY, PrinterStatus, host_status_complete, parse_host_status
from drivers.scanner import Scan, ScanFramer, decode_scan

__all__ = ["SERIAL_OPTIONS", "SerialPrinter", "SerialScanner", "open_serial_port"]

SERIAL_OPTIONS = ("baud", "baudrate", "bytesize", "parity", "stopbits")
_PARITY = {
    "N": serial.PARITY_NONE,
    "E": serial.PARITY_EVEN,
    "O": serial.PARITY_ODD,
    "M": serial.PARITY_MARK,
    "S": serial.PARITY_SPACE,
}
_STOPBITS = {"1": serial.STOPBITS_ONE, "1.5": serial.STOPBITS_ONE_POINT_FIVE, "2": serial.STOPBITS_TWO}
# How long one blocking port read may last; bounds deadline overshoot and close latency.
POLL_S = 0.05


def open_serial_port(
    dev: DeviceURL,
    *,
    timeout_s: float | None,
    write_timeout_s: float | None,
    extra_options: tuple[str, ...] = (),
) -> serial.Serial:
    """Open the port named by ``dev`` (raw mode: pyserial sets termios; input is flushed on open)."""
    dev.allow_only(*SERIAL_OPTIONS, *extra_options)
    port = serial_port_path(dev)
    if "baud" in dev.params and "baudrate" in dev.params:
        raise UnsupportedURL(f"{dev.url!r}: give baud or baudrate, not both")
    baud = int_param(dev, "baudrate" if "baudrate" in dev.params else "baud", 9600)
    bytesize = int_param(dev, "bytesize", 8, choices=(5, 6, 7, 8))
    parity = dev.params.get("parity", "N").upper()[:1]
    if parity not in _PARITY:
        raise UnsupportedURL(f"{dev.url!r}: parity must be one of N, E, O, M, S")
    stopbits = dev.params.get("stopbits", "1")
    if stopbits not in _STOPBITS:
        raise UnsupportedURL(f"{dev.url!r}: stopbits must be 1, 1.5 or 2")
    try:
        return serial.Serial(
            port=port,
            baudrate=baud,
            bytesize=bytesize,
            parity=_PARITY[parity],
            stopbits=_STOPBITS[stopbits],
            timeout=timeout_s,
            write_timeout=write_timeout_s,
            # flock the port: two processes reading one scanner would each get half the scans
            exclusive=True if os.name == "posix" else None,
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise DeviceError(f"cannot open serial port {port} ({dev.url}): {exc}") from exc


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
    def open(cls, dev: DeviceURL) -> SerialScanner:
        idle_ms = dev.params.get("idle_ms")
        idle_s = int_param(dev, "idle_ms", 1) / 1000 if idle_ms is not None else None
        port = open_serial_port(dev, timeout_s=POLL_S, write_timeout_s=None, extra_options=("idle_ms",))
        return cls(dev.url, port, idle_s=idle_s)

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
    def open(cls, dev: DeviceURL, *, timeout_s: float) -> SerialPrinter:
        port = open_serial_port(dev, timeout_s=POLL_S, write_timeout_s=timeout_s)
        return cls(dev.url, port, timeout_s=timeout_s)

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
