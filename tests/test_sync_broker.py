"""Brokers Packline starts for itself, and the quick "is there a broker?" probe."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.broker import _die_with_parent, probe_mqtt_broker, start_process_broker
from sync.settings import parse_mqtt_url
from tests.support import free_port, need, need_binary


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port the kernel accepts connections on; what it says is up to the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s


def test_probe_passes_a_real_broker(mqtt_broker: tuple[str, int]) -> None:
    probe_mqtt_broker(parse_mqtt_url(mqtt_broker[0]))


def test_probe_refuses_a_closed_port_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="no MQTT broker answers at mqtt://127.0.0.1:"):
        probe_mqtt_broker(parse_mqtt_url(f"mqtt://127.0.0.1:{free_port()}"))
    assert time.monotonic() - started < 2


def test_probe_names_a_port_that_accepts_tcp_but_never_answers(listener: socket.socket) -> None:
    url = parse_mqtt_url(f"mqtt://127.0.0.1:{listener.getsockname()[1]}")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=r"sent no CONNACK within 0.5 s: is this an MQTT broker\?"):
        probe_mqtt_broker(url, timeout_s=0.5)
    assert time.monotonic() - started < 3


def test_probe_names_a_port_that_speaks_something_else(listener: socket.socket) -> None:
    def http_server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    t = threading.Thread(target=http_server, daemon=True)
    t.start()
    with pytest.raises(ConnectionError, match="something other than a CONNACK"):
        probe_mqtt_broker(parse_mqtt_url(f"mqtt://127.0.0.1:{listener.getsockname()[1]}"), timeout_s=2)
    t.join(5)


def test_each_process_broker_has_its_own_folder_and_abandoned_ones_are_swept(tmp_path: Path) -> None:
    base = tmp_path / "broker"
    abandoned = base / "p999999-dead"  # its owner was SIGKILLed: the lock file is there but nobody holds it
    abandoned.mkdir(parents=True)
    (abandoned / "owner.lock").touch()
    (abandoned / "mosquitto.conf").touch()
    half_made = base / "p999998-new"  # another process is setting this one up right now: no lock file yet
    half_made.mkdir()
    first = start_process_broker(base)
    try:
        second = start_process_broker(base)
        try:
            assert first.url != second.url
            folders = sorted(p.name for p in base.iterdir())
            assert "p999999-dead" not in folders and "p999998-new" in folders
            assert len(folders) == 3  # first, second, the half-made one
            # a live owner's folder survives another start's sweep
            third = start_process_broker(base)
            third.stop()
            assert len(list(base.iterdir())) == 3
        finally:
            second.stop()
    finally:
        first.stop()
    assert [p.name for p in base.iterdir()] == ["p999998-new"]


def test_parent_death_signal_only_from_the_main_thread() -> None:
    need(sys.platform.startswith("linux"), "PR_SET_PDEATHSIG is Linux only")
    assert _die_with_parent() is not None
    seen: list[object] = []
    t = threading.Thread(target=lambda: seen.append(_die_with_parent()))
    t.start()
    t.join()
    assert seen == [None]  # the broker would die with that thread, not with the process


def test_a_private_mosquitto_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    need(sys.platform.startswith("linux"), "PR_SET_PDEATHSIG is Linux only")
    need_binary("mosquitto")
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from sync.broker import MosquittoProcess
        m = MosquittoProcess(Path({str(tmp_path / "m")!r})).start()
        print(m.proc.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert b"mosquitto" in Path(f"/proc/{pid}/cmdline").read_bytes()
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "mosquitto outlived its SIGKILLed parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
