"""A simulated Zebra label printer that speaks the wire: a TCP server like the raw port 9100.

It collects every complete ``^XA ... ^XZ`` label in arrival order (a connection may carry
several labels, a label may arrive in many small pieces) and answers ``~HS`` wherever it
appears in the stream, like the real printer processes tilde commands on receipt.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

from drivers.transport.file import write_numbered_job

__all__ = ["SimulatedZebra", "ZplStream"]

_START = b"^XA"
_END = b"^XZ"
_STATUS = b"~HS"


class ZplStream:
    """Incremental splitter of one connection's byte stream into labels and ``~HS`` queries.

    ``feed`` returns events in stream order: ``("label", bytes)`` or ``("status", b"")``.
    Commands are matched case-insensitively; bytes outside ``^XA...^XZ`` are ignored.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # where to search next
        self._label_start: int | None = None

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self._buf += data
        events: list[tuple[str, bytes]] = []
        while True:
            hay = bytes(self._buf[self._pos :]).upper()
            status_at = hay.find(_STATUS)
            marker = _END if self._label_start is not None else _START
            marker_at = hay.find(marker)
            if status_at < 0 and marker_at < 0:
                break
            if status_at >= 0 and (marker_at < 0 or status_at < marker_at):
                events.append(("status", b""))
                self._pos += status_at + len(_STATUS)
            elif self._label_start is None:
                self._label_start = self._pos + marker_at
                self._pos += marker_at + len(_START)
            else:
                end = self._pos + marker_at + len(_END)
                events.append(("label", bytes(self._buf[self._label_start : end])))
                self._label_start = None
                self._pos = end
        # A command may be split across recv()s: look again at the last two bytes next time.
        self._pos = max(self._pos, len(self._buf) - 2)
        # Keep only what can still matter: the open label, or the unsearched tail.
        keep_from = self._label_start if self._label_start is not None else self._pos
        del self._buf[:keep_from]
        self._pos -= keep_from
        if self._label_start is not None:
            self._label_start = 0
        return events


class SimulatedZebra:
    """A threaded TCP server on 127.0.0.1 (port 0 = a free port) that acts like a Zebra.

    The status flags (``paper_out``, ``paused``, ``head_open``, ``ribbon_out``) may be
    changed at any time; the next ``~HS`` reports them. Labels are accepted even when the
    printer is not ready, as a real one buffers them.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        paper_out: bool = False,
        paused: bool = False,
        head_open: bool = False,
        ribbon_out: bool = False,
        spool_dir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.paper_out = paper_out
        self.paused = paused
        self.head_open = head_open
        self.ribbon_out = ribbon_out
        self.spool_dir = spool_dir
        self.url = ""
        self.status_queries = 0
        self._jobs: list[bytes] = []
        self._cond = threading.Condition()
        self._server: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conn_threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> SimulatedZebra:
        if self._server is not None:
            return self
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        server = socket.create_server((self.host, self.port))
        self.port = server.getsockname()[1]
        self.url = f"tcp://{self.host}:{self.port}"
        self._server = server
        self._stopping = False
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(server,), name=f"sim-zebra-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        server.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2.0)
            self._accept_thread = None
        with self._cond:  # no new connections from here on
            conns = list(self._conns)
            threads = list(self._conn_threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=2.0)

    def __enter__(self) -> SimulatedZebra:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what the test looks at ------------------------------------------------------------

    @property
    def jobs(self) -> list[bytes]:
        """A copy of every complete label received so far, in order."""
        with self._cond:
            return list(self._jobs)

    def wait_for_jobs(self, n: int, timeout_s: float) -> list[bytes]:
        """Wait until at least ``n`` labels arrived; return them all. Raises TimeoutError."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._jobs) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.url}: expected {n} label(s) within {timeout_s:g} s, got {len(self._jobs)}"
                    )
                self._cond.wait(left)
            return list(self._jobs)

    def clear(self) -> None:
        with self._cond:
            self._jobs.clear()

    def host_status_reply(self) -> bytes:
        """The ``~HS`` answer for the current flags (ZPL II Programming Guide layout)."""
        with self._cond:
            formats = 0
            string1 = f"030,{int(self.paper_out)},{int(self.paused)},1218,{formats:03d},0,0,0,000,0,0,0"
            string2 = f"000,0,{int(self.head_open)},{int(self.ribbon_out)},0,2,6,0,00000000,1,000"
        string3 = "1234,0"
        return b"".join(b"\x02" + s.encode("ascii") + b"\x03\r\n" for s in (string1, string2, string3))

    # -- the wire --------------------------------------------------------------------------

    def _accept_loop(self, server: socket.socket) -> None:
        while not self._stopping:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(conn,), name="sim-zebra-conn", daemon=True)
            with self._cond:
                self._conns.add(conn)
                self._conn_threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        stream = ZplStream()
        try:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return  # the host closed its side: close ours, as the printer does
                for kind, label in stream.feed(data):
                    if kind == "status":
                        with self._cond:
                            self.status_queries += 1
                        conn.sendall(self.host_status_reply())
                    else:
                        self._record(label)
        except OSError:
            return
        finally:
            with self._cond:
                self._conns.discard(conn)
                self._conn_threads.discard(threading.current_thread())
            conn.close()

    def _record(self, label: bytes) -> None:
        if self.spool_dir is not None:
            write_numbered_job(self.spool_dir, label)
        with self._cond:
            self._jobs.append(label)
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"SimulatedZebra({self.url or 'not started'!r}, jobs={len(self.jobs)})"
