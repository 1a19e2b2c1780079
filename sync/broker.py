"""Brokers Packline starts for itself when none is configured.

* :class:`MosquittoProcess` — a private ``mosquitto`` on a free loopback port with its own
  config and persistence under a folder of ours (preferred: it speaks MQTT 5).
* :class:`EmbeddedBroker` — amqtt in a background thread (MQTT 3.1.1 only; keeps sessions
  only for non-anonymous clients; never enforces keepalive). Used where no ``mosquitto``
  binary exists, e.g. a laptop.

:func:`start_default_broker` picks the first that works. Both expose ``url`` and
``protocol`` (5 or 311: the MQTT version clients should speak to it) and ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = ["BrokerError", "EmbeddedBroker", "MosquittoProcess", "RunningBroker", "start_default_broker"]

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
            start_new_session=True,
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
