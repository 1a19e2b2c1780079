"""``tcp://host:9100``: the raw port of a network label printer (Zebra: 9100)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from drivers._url import DeviceURL
from drivers.errors import DeviceError, UnsupportedURL
from drivers.printer import HOST_STATUS_QUERY, PrinterStatus, host_status_complete, parse_host_status

__all__ = ["DEFAULT_PORT", "TcpPrinter", "TcpTarget", "parse_tcp_url"]

DEFAULT_PORT = 9100


@dataclass(frozen=True)
class TcpTarget:
    """A checked ``tcp://host[:port]`` printer URL; nothing connected yet."""

    url: str
    host: str
    port: int


def parse_tcp_url(dev: DeviceURL) -> TcpTarget:
    """Check ``tcp://host[:port]`` (port 1-65535, 9100 when left out; no path, no options)."""
    dev.allow_only()
    if dev.path not in ("", "/"):
        raise UnsupportedURL(f"{dev.url!r}: a tcp:// printer URL has no path (tcp://host:9100)")
    parts = urlsplit(dev.url)
    if parts.username is not None or parts.password is not None:
        raise UnsupportedURL(f"{dev.url!r}: a tcp:// printer URL takes no user name (tcp://host:9100)")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None and parts.netloc.endswith(":"):
        port = -1  # "tcp://host:" - a port was meant but is missing
    if port is None:
        port = DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise UnsupportedURL(f"{dev.url!r}: the port must be a number from 1 to 65535 (Zebra: 9100)")
    host = parts.hostname
    if not host:
        raise UnsupportedURL(f"{dev.url!r} names no host (tcp://host:9100)")
    return TcpTarget(url=dev.url, host=host, port=port)


class TcpPrinter:
    """One short connection per job or status query.

    A Zebra's raw port serves one client at a time, so a long-lived connection from one
    station would lock out everyone else (and go stale across printer restarts). After the
    job is written we half-close and wait for the printer to close its side (as CUPS' socket
    backend does), so we never reset a connection that still has data in flight.
    """

    def __init__(self, url: str, host: str, port: int, *, timeout_s: float) -> None:
        self.url = url
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, target: TcpTarget, *, timeout_s: float) -> TcpPrinter:
        """A printer for a URL checked by :func:`parse_tcp_url` (connects only per job)."""
        return cls(target.url, target.host, target.port, timeout_s=timeout_s)

    def _connect(self) -> socket.socket:
        if self._closed:
            raise DeviceError(f"printer {self.url} is closed")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except ConnectionRefusedError:
            raise DeviceError(
                f"printer {self.url} refused the connection (is it switched on, is the port right?)"
            ) from None
        except TimeoutError:
            raise DeviceError(f"printer {self.url} did not answer within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise DeviceError(f"cannot connect to printer {self.url}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send() takes bytes, got {type(data).__name__}")
        if not data:
            return
        with self._lock:
            sock = self._connect()
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                self._wait_for_close(sock)
            except TimeoutError:
                raise DeviceError(
                    f"sending to printer {self.url} timed out after {self.timeout_s:g} s"
                ) from None
            except OSError as exc:
                raise DeviceError(f"sending to printer {self.url} failed: {exc}") from exc
            finally:
                sock.close()

    def _wait_for_close(self, sock: socket.socket) -> None:
        """Drain until the printer closes; a printer that keeps the socket open is not an error."""
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                if not sock.recv(4096):
                    return
            except TimeoutError:
                return

    def status(self) -> PrinterStatus:
        with self._lock:
            sock = self._connect()
            reply = bytearray()
            try:
                sock.sendall(HOST_STATUS_QUERY)
                deadline = time.monotonic() + self.timeout_s
                while not host_status_complete(reply):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(left)
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise DeviceError(
                            f"printer {self.url} closed the connection mid ~HS reply: {bytes(reply)!r}"
                        )
                    reply += chunk
            except TimeoutError:
                raise DeviceError(
                    f"printer {self.url} sent no complete ~HS reply within {self.timeout_s:g} s "
                    f"(got {bytes(reply)!r})"
                ) from None
            except OSError as exc:
                raise DeviceError(f"status query to printer {self.url} failed: {exc}") from exc
            finally:
                sock.close()
        return parse_host_status(bytes(reply))

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"TcpPrinter({self.url!r})"
