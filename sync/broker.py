"""Brokers Packline starts for itself when none is configured.

* :class:`MosquittoProcess` — a private ``mosquitto`` on a free loopback port with its own
  config and persistence under a folder of ours (preferred: it speaks MQTT 5).
* :class:`EmbeddedBroker` — amqtt in a background thread (MQTT 3.1.1 only; keeps sessions
  only for non-anonymous clients; never enforces keepalive). Used where no ``mosquitto``
  binary exists, e.g. a laptop.

:func:`start_default_broker` picks the first that works. Both expose ``url`` and
``protocol`` (5 or 311: the MQTT version clients should speak to it) and ``stop()``.
:func:`start_process_broker` does the same in a folder of this process's own (two processes
with the same data dir each get theirs).

A private mosquitto never outlives Packline: ``stop()`` ends it, and on Linux it is started
with a parent-death signal (``PR_SET_PDEATHSIG``), so it gets SIGTERM even when Packline is
SIGKILLed. The kernel sends that signal when the *thread* that started the broker ends, so it
is set only when the broker is started from the main thread (as ``packline cloud serve`` and
``packline demo`` do); a broker started from another thread relies on ``stop()`` alone.

:func:`probe_mqtt_broker` answers "is there an MQTT broker at this URL?" in seconds, before
anything else is started (a refused port, or a port that accepts TCP but never answers
CONNECT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sync.settings import MqttUrl

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "MosquittoProcess",
    "RunningBroker",
    "probe_mqtt_broker",
    "start_default_broker",
    "start_process_broker",
]

log = logging.getLogger("packline.broker")


class BrokerError(RuntimeError):
    pass


class RunningBroker(Protocol):
    url: str
    protocol: int

    def stop(self) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


def probe_mqtt_broker(url: MqttUrl, timeout_s: float = 3.0) -> None:
    """Raise ConnectionError unless an MQTT broker answers at ``url`` within about ``timeout_s``.

    Opens a TCP (for mqtts://, TLS) connection, sends an MQTT 3.1.1 CONNECT with a throwaway
    client id and clean session, waits for any CONNACK (a refusal, e.g. bad credentials, still
    proves a broker: the real client reports it) and disconnects. Every MQTT 5 broker also
    speaks 3.1.1, so this works for both.
    """
    try:
        sock = socket.create_connection((url.host, url.port), timeout=timeout_s)
    except OSError as e:
        raise ConnectionError(f"no MQTT broker answers at {url}: {e}") from None
    try:
        sock.settimeout(timeout_s)
        if url.tls:
            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.host)
            except (ssl.SSLError, OSError) as e:
                raise ConnectionError(f"TLS with the MQTT broker at {url} failed: {e}") from None
        client_id = f"packline-probe-{uuid.uuid4().hex[:8]}".encode()
        body = (b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4 (3.1.1), clean session, keepalive 10 s
                + len(client_id).to_bytes(2, "big") + client_id)
        hint = "" if url.tls else " (a TLS port needs mqtts://)"
        try:
            sock.sendall(bytes([0x10, len(body)]) + body)
            first = sock.recv(1)
        except TimeoutError:
            raise ConnectionError(f"{url} accepted a TCP connection but sent no CONNACK within {timeout_s:g} s: "
                                  f"is this an MQTT broker?{hint}") from None
        except OSError as e:
            raise ConnectionError(f"{url} closed the connection instead of answering MQTT CONNECT ({e}): "
                                  f"is this an MQTT broker?{hint}") from None
        if not first:
            raise ConnectionError(f"{url} closed the connection instead of answering MQTT CONNECT: "
                                  f"is this an MQTT broker?{hint}")
        if first[0] & 0xF0 != 0x20:
            raise ConnectionError(f"{url} answered MQTT CONNECT with something other than a CONNACK: "
                                  f"is this an MQTT broker?{hint}")
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    finally:
        sock.close()


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux), or None.

    PR_SET_PDEATHSIG fires when the forking *thread* exits, so only a fork from the main thread
    (which lives as long as the process) gets it; other threads get None.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
    except (OSError, AttributeError, ImportError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: nothing that may take a lock
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0 and os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)  # the parent died before prctl: nobody would tell us

    return preexec


class MosquittoProcess:
    """A private mosquitto: ``MosquittoProcess(folder).start()``; restartable on the same port."""

    protocol = 5

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        binary: str | None = None,
        extra_config: str = "",
        persistence: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.port = port or free_port()
        self.binary = binary or shutil.which("mosquitto")
        if not self.binary:
            raise BrokerError("mosquitto is not on PATH")
        self.extra_config = extra_config
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.folder / "mosquitto.conf"

    def _write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            "set_tcp_nodelay true",  # without it the broker's PUBACKs and deliveries meet Nagle's ~40 ms stalls
            f"log_dest file {self.folder / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.persistence:
            # saved every second: a hard kill loses at most a second of queued messages, which the
            # stations' outboxes and the feed replay resend anyway (saving on every change costs ~4x)
            lines += ["persistence true", f"persistence_location {self.folder}/", "autosave_interval 1"]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise mosquitto drops to 'mosquitto' and cannot write our folder
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> MosquittoProcess:
        self._write_config()
        assert self.binary
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl+C reaches Packline, which stops the broker after its clients
            preexec_fn=_die_with_parent(),  # one prctl, getppid, kill: nothing that takes a lock
        )
        if not wait_for_port("127.0.0.1", self.port, timeout_s):
            err = b""
            if self.proc.poll() is not None and self.proc.stderr:
                err = self.proc.stderr.read()
            self.stop()
            log_file = self.folder / "mosquitto.log"
            detail = err.decode(errors="replace") or (log_file.read_text()[-2000:] if log_file.exists() else "")
            raise BrokerError(f"mosquitto did not start on port {self.port}: {detail.strip()}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """Hard kill (SIGKILL), as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedBroker:
    """amqtt running on its own event loop in a daemon thread."""

    protocol = 311

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        self._thread = threading.Thread(target=self._run, name="packline-embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error:
            raise BrokerError(f"embedded broker did not start: {self._error!r}")
        if not wait_for_port("127.0.0.1", self.port, timeout_s):
            raise BrokerError(f"embedded broker is not listening on {self.port}")
        return self

    def _run(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 0}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        async def boot() -> None:
            self._broker = Broker(config, loop=loop)
            await self._broker.start()

        try:
            loop.run_until_complete(boot())
        except BaseException as e:  # report to the starting thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        with contextlib.suppress(Exception):
            loop.run_until_complete(self._broker.shutdown())
        loop.close()

    def stop(self) -> None:
        if self._loop and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=10)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_default_broker(folder: Path) -> RunningBroker:
    """A private mosquitto if the binary exists, else the embedded broker."""
    if shutil.which("mosquitto"):
        try:
            return MosquittoProcess(folder).start()
        except BrokerError as e:
            log.warning("private mosquitto failed (%s); using the embedded broker", e)
    return EmbeddedBroker().start()


_LOCK = "owner.lock"


class _ProcessBroker:
    """A broker in a folder this process owns (held by an flock on ``owner.lock``); ``stop()``
    stops the broker and removes the folder."""

    def __init__(self, broker: RunningBroker, folder: Path, lock_fd: int | None) -> None:
        self.broker, self.folder, self._lock_fd = broker, folder, lock_fd
        self.url, self.protocol = broker.url, broker.protocol

    def stop(self) -> None:
        try:
            self.broker.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def _lock_folder(folder: Path) -> int | None:
    """Hold an exclusive flock on ``folder/owner.lock`` for as long as the returned fd is open.
    The lock file is locked before it gets its name, so a named lock file is always held
    while its owner lives (and free once it is gone, however it ended)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no sweeping of abandoned folders
        return None
    tmp = folder / f".{_LOCK}.tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.replace(tmp, folder / _LOCK)
    return fd


def _sweep_abandoned(base: Path) -> None:
    """Remove folders under ``base`` left by processes that died without ``stop()`` (SIGKILL)."""
    try:
        import fcntl
    except ImportError:
        return
    for folder in base.glob("p*-*"):
        lock = folder / _LOCK
        if not lock.is_file():
            continue  # being set up right now, or not ours
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is alive
        finally:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)


def start_process_broker(base: Path) -> RunningBroker:
    """:func:`start_default_broker` in a new folder under ``base`` that belongs to this process
    alone (``base/p<pid>-<random>``): two processes with the same data dir never share a
    broker's config, persistence or log. ``stop()`` removes the folder; folders of processes
    that died without stopping are swept at the next start."""
    base.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        _sweep_abandoned(base)
    folder = Path(tempfile.mkdtemp(prefix=f"p{os.getpid()}-", dir=base))
    lock_fd: int | None = None
    try:
        lock_fd = _lock_folder(folder)
        broker = start_default_broker(folder)
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return _ProcessBroker(broker, folder, lock_fd)
