"""Printer driver: ~HS parsing, and jobs over real TCP (SimulatedZebra), files, a pty, CUPS."""

from __future__ import annotations

import os
import socket
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import (
    DeviceError,
    PrinterStatus,
    UnsupportedURL,
    open_printer,
    parse_host_status,
    parse_printer_url,
)
from drivers.sim import SimulatedZebra
from drivers.sim.zebra import ZplStream
from drivers.transport.cups import CupsTarget
from drivers.transport.file import FileTarget
from drivers.transport.serialport import SerialSettings
from drivers.transport.tcp import TcpTarget
from tests.support import free_port

LABEL_1 = b"^XA^CI28^FO50,50^A0N,40,40^FDOrder ACME-10001^FS^BY2^FO50,120^BCN,80,Y,N,N^FD>;12345678^FS^XZ"
LABEL_2 = b"^XA^FO20,20^GB200,100,3^FS^FO40,40^FH^FDCaret _5EXZ stays text^FS^XZ"
LABEL_3 = b"^XA^PQ2^FO10,10^FDThird^FS^XZ"

# ~HS as a real printer sends it (ZPL II Programming Guide, ~HS): paper out, head up,
# ribbon out, 100 labels remaining in the batch.
HS_PAPER_HEAD_RIBBON = (
    b"\x02030,1,0,1245,000,0,0,0,000,0,0,0\x03\r\n"
    b"\x02001,0,1,1,1,2,6,0,00000100,1,000\x03\r\n"
    b"\x021234,0\x03\r\n"
)
HS_READY = (
    b"\x02030,0,0,1245,000,0,0,0,000,0,0,0\x03\r\n"
    b"\x02000,0,0,0,0,2,6,0,00000000,1,000\x03\r\n"
    b"\x021234,0\x03\r\n"
)


# -- ~HS parsing -----------------------------------------------------------------------------


def test_parse_hand_written_reply() -> None:
    status = parse_host_status(HS_PAPER_HEAD_RIBBON)
    assert status == PrinterStatus(
        paper_out=True,
        paused=False,
        head_open=True,
        ribbon_out=True,
        labels_remaining=100,
        raw=HS_PAPER_HEAD_RIBBON.decode("latin-1"),
    )
    assert not status.ready


def test_parse_ready_and_paused() -> None:
    assert parse_host_status(HS_READY).ready
    paused = parse_host_status(HS_READY.replace(b"030,0,0,", b"030,0,1,"))
    assert paused.paused and not paused.ready


@pytest.mark.parametrize(
    "reply",
    [
        HS_PAPER_HEAD_RIBBON.replace(b"\r\n", b""),  # no CR LF
        b"\r\n\x00" + HS_PAPER_HEAD_RIBBON,  # noise before
        HS_READY + HS_PAPER_HEAD_RIBBON,  # two replies: the last one counts
        HS_PAPER_HEAD_RIBBON.replace(b"\x02", b"").replace(b"\x03", b""),  # no STX/ETX framing
        b"\x02 030 , 1 , 0 ,1245,000,0,0,0,000,0,0,0\x03\r\n\x02001,0, 1,1,1,2,6,0,00000100,1,000\x03",
    ],
)
def test_parse_is_tolerant(reply: bytes) -> None:
    status = parse_host_status(reply)
    assert (status.paper_out, status.paused, status.head_open, status.ribbon_out) == (True, False, True, True)
    assert status.labels_remaining == 100


def test_parse_string_1_only() -> None:
    status = parse_host_status(b"\x02030,1,1,1245,000,0,0,0,000,0,0,0\x03\r\n")
    assert (status.paper_out, status.paused, status.head_open, status.ribbon_out) == (
        True,
        True,
        False,
        False,
    )
    assert status.labels_remaining is None


@pytest.mark.parametrize("reply", [b"", b"\r\n", b"\x02hello\x03\r\n", b"\x02030,X,0,1245\x03\r\n"])
def test_parse_garbage_is_a_device_error(reply: bytes) -> None:
    with pytest.raises(DeviceError):
        parse_host_status(reply)


# -- the simulator's stream parser -------------------------------------------------------------


def test_zpl_stream_finds_labels_and_status_queries_across_any_split() -> None:
    stream = b"junk~HS" + LABEL_1 + b"\r\n" + LABEL_2 + b"~hs" + LABEL_3[:10] + b"~HS" + LABEL_3[10:]
    expected = [
        ("status", b""),
        ("label", LABEL_1),
        ("label", LABEL_2),
        ("status", b""),
        ("status", b""),
        ("label", LABEL_3[:10] + b"~HS" + LABEL_3[10:]),
    ]
    for size in (1, 2, 3, 5, 7, len(stream)):
        parser = ZplStream()
        events = [e for i in range(0, len(stream), size) for e in parser.feed(stream[i : i + size])]
        assert events == expected, size


# -- TCP against the simulated Zebra --------------------------------------------------------------


@pytest.fixture
def zebra() -> Iterator[SimulatedZebra]:
    with SimulatedZebra() as sim:
        yield sim


def test_simulator_url_and_lifecycle() -> None:
    sim = SimulatedZebra()
    assert sim.start() is sim
    assert sim.url == f"tcp://127.0.0.1:{sim.port}" and sim.port > 0
    sim.stop()
    sim.stop()  # idempotent


def test_job_arrives_byte_exact(zebra: SimulatedZebra) -> None:
    printer = open_printer(zebra.url)
    printer.send(LABEL_1)
    assert zebra.wait_for_jobs(1, timeout_s=2) == [LABEL_1]
    printer.close()


def test_several_labels_in_one_job_and_several_jobs_in_order(zebra: SimulatedZebra) -> None:
    printer = open_printer(zebra.url)
    printer.send(LABEL_1 + b"\r\n" + LABEL_2)
    printer.send(LABEL_3)
    assert zebra.wait_for_jobs(3, timeout_s=2) == [LABEL_1, LABEL_2, LABEL_3]


def test_job_split_into_small_writes(zebra: SimulatedZebra) -> None:
    """A slow host: one connection, many tiny TCP segments, a status query in between."""
    data = LABEL_1 + LABEL_2 + b"~H" + b"S" + LABEL_3
    with socket.create_connection(("127.0.0.1", zebra.port), timeout=2) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 3):
            sock.sendall(data[i : i + 3])
        reply = b""
        while reply.count(b"\x03") < 3:
            reply += sock.recv(1024)
        assert parse_host_status(reply).ready
        assert zebra.wait_for_jobs(3, timeout_s=2) == [LABEL_1, LABEL_2, LABEL_3]


def test_wait_for_jobs_times_out(zebra: SimulatedZebra) -> None:
    with pytest.raises(TimeoutError):
        zebra.wait_for_jobs(1, timeout_s=0.05)
    assert zebra.jobs == []


def test_status_follows_paper_out_at_runtime() -> None:
    with SimulatedZebra(paper_out=True) as sim:
        printer = open_printer(sim.url)
        status = printer.status()
        assert status is not None and status.paper_out and not status.ready
        sim.paper_out = False
        status = printer.status()
        assert status is not None and not status.paper_out and status.ready
        sim.head_open = True
        sim.paused = True
        status = printer.status()
        assert status is not None and status.head_open and status.paused and not status.ready
        assert sim.status_queries == 3
        # a printer without paper still takes (buffers) the job
        sim.paper_out = True
        printer.send(LABEL_1)
        assert sim.wait_for_jobs(1, timeout_s=2) == [LABEL_1]


def test_simulator_spools_jobs(tmp_path: Path) -> None:
    with SimulatedZebra(spool_dir=tmp_path / "spool") as sim:
        open_printer(sim.url).send(LABEL_1 + LABEL_2)
        sim.wait_for_jobs(2, timeout_s=2)
    assert (tmp_path / "spool" / "job-0001.zpl").read_bytes() == LABEL_1
    assert (tmp_path / "spool" / "job-0002.zpl").read_bytes() == LABEL_2


def test_stop_with_an_idle_connection_open(zebra: SimulatedZebra) -> None:
    sock = socket.create_connection(("127.0.0.1", zebra.port), timeout=2)
    try:
        started = time.monotonic()
        zebra.stop()
        assert time.monotonic() - started < 1
    finally:
        sock.close()


def test_connection_refused_is_a_device_error() -> None:
    printer = open_printer(f"tcp://127.0.0.1:{free_port()}", timeout_s=1)
    with pytest.raises(DeviceError, match="refused"):
        printer.send(LABEL_1)
    with pytest.raises(DeviceError, match="refused"):
        printer.status()


def test_status_timeout_is_a_device_error() -> None:
    """A peer that accepts but never answers ~HS (e.g. not a Zebra at all)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        printer = open_printer(f"tcp://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(DeviceError, match="~HS"):
            printer.status()
        assert time.monotonic() - started < 1


def test_closed_printer_refuses_jobs(zebra: SimulatedZebra) -> None:
    printer = open_printer(zebra.url)
    printer.close()
    with pytest.raises(DeviceError, match="closed"):
        printer.send(LABEL_1)


def test_send_takes_bytes_only(zebra: SimulatedZebra) -> None:
    with pytest.raises(TypeError):
        open_printer(zebra.url).send("^XA^XZ")  # type: ignore[arg-type]


# -- file:// ------------------------------------------------------------------------------


def test_file_printer_folder_numbers_jobs(tmp_path: Path) -> None:
    folder = tmp_path / "labels"
    printer = open_printer(f"file://{folder}/")
    printer.send(LABEL_1)
    printer.send(LABEL_2)
    assert printer.status() is None
    assert sorted(p.name for p in folder.iterdir()) == ["job-0001.zpl", "job-0002.zpl"]
    assert (folder / "job-0001.zpl").read_bytes() == LABEL_1
    assert (folder / "job-0002.zpl").read_bytes() == LABEL_2
    # an existing folder (no trailing slash) continues the numbering
    open_printer(f"file://{folder}").send(LABEL_3)
    assert (folder / "job-0003.zpl").read_bytes() == LABEL_3


def test_file_printer_appends_to_one_file(tmp_path: Path) -> None:
    target = tmp_path / "all.zpl"
    printer = open_printer(f"file://{target}")
    printer.send(LABEL_1)
    printer.send(LABEL_2)
    assert target.read_bytes() == LABEL_1 + LABEL_2


def test_file_printer_missing_parent_is_a_device_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceError):
        open_printer(f"file://{tmp_path}/nope/all.zpl")


# -- serial:// over a pty -----------------------------------------------------------------------


def test_serial_printer_over_a_pty() -> None:
    """A tiny serial Zebra on the master side of a pty: collects labels, answers ~HS."""
    master, slave = os.openpty()
    tty.setraw(slave)
    received: list[bytes] = []
    stop = threading.Event()

    def zebra_side() -> None:
        stream = ZplStream()
        while not stop.is_set():
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            for kind, label in stream.feed(data):
                if kind == "status":
                    os.write(master, HS_PAPER_HEAD_RIBBON)
                else:
                    received.append(label)

    thread = threading.Thread(target=zebra_side, daemon=True)
    thread.start()
    printer = open_printer(f"serial://{os.ttyname(slave)}?baud=115200", timeout_s=2)
    try:
        printer.send(LABEL_1 + LABEL_2)
        status = printer.status()  # answered after the labels, so both have arrived
        assert status is not None and status.paper_out and status.labels_remaining == 100
        assert received == [LABEL_1, LABEL_2]
    finally:
        printer.close()
        stop.set()
        os.close(slave)
        os.close(master)
        thread.join(timeout=2)


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "lpd://printer/queue",
        "sim://",
        "zebra",
        "tcp://",
        "tcp://:9100",
        "tcp://printer:notaport",
        "tcp://printer:9100/labels",
        "tcp://printer:9100?keepalive=1",
        "file://relative/labels/",
        "file://",
        "cups://",
        "serial://dev/ttyUSB0",
        "tcp://printer:0",
        "tcp://printer:65536",
        "tcp://printer:-1",
        "tcp://printer:",
        "tcp://user@printer:9100",
        "tcp://[::1:9100",
        "file:///",
        "cups://Zebra ZT411",
        "serial:///dev/ttyUSB0?baud=xyz",
        "serial:///dev/ttyUSB0?baud=-5",
        "serial:///dev/ttyUSB0?baud=123456789",
        "serial:///dev/ttyUSB0?baud=9601",
        "serial:///dev/ttyUSB0?bogus=1",
        "serial:///dev/ttyUSB0?idle_ms=50",
        "serial:///dev/ttyUSB0?parity=Nonsense",
        "serial:///dev/ttyUSB0?stopbits=3",
        "serial:///dev/ttyUSB0?bytesize=9",
        "serial:///dev/ttyUSB0?baud=9600&baud=9600",
    ],
)
def test_bad_printer_urls(url: str) -> None:
    with pytest.raises(UnsupportedURL) as parsed:
        parse_printer_url(url)
    with pytest.raises(UnsupportedURL) as opened:
        open_printer(url)
    assert str(opened.value) == str(parsed.value)  # the opener's check IS the parser


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tcp://10.0.0.7:0", "'tcp://10.0.0.7:0': the port must be a number from 1 to 65535 (Zebra: 9100)"),
        ("serial:///dev/ttyUSB0?baud=xyz", "option baud='xyz' in 'serial:///dev/ttyUSB0?baud=xyz' is not a "
         "standard serial rate; use one of 50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, "
         "19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, "
         "2000000, 2500000, 3000000, 3500000, 4000000"),
        ("serial:///dev/ttyUSB0?speed=9600", "unknown option 'speed' in 'serial:///dev/ttyUSB0?speed=9600' "
         "(allowed options: baud, baudrate, bytesize, parity, stopbits)"),
        ("file:///srv/labels/?mode=raw", "'file:///srv/labels/?mode=raw': a file:// URL takes no options (got 'mode')"),
        ("lpd://printer/queue", "printer URL 'lpd://printer/queue' is not supported: use tcp://host:9100, "
         "file:///dir/, cups://Queue or serial:///dev/ttyUSB0?baud=9600"),
    ],
)
def test_bad_printer_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(UnsupportedURL) as err:
        parse_printer_url(url)
    assert str(err.value) == message


def test_parse_printer_url_opens_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import drivers.transport.cups as cups

    def no_cups(*_a: object) -> None:
        raise AssertionError("parse_printer_url asked CUPS")

    monkeypatch.setattr(cups, "_zebra", no_cups)
    port = free_port()  # nobody listens: parsing must not connect
    assert parse_printer_url(f"tcp://127.0.0.1:{port}") == TcpTarget(f"tcp://127.0.0.1:{port}", "127.0.0.1", port)
    assert parse_printer_url("tcp://[2001:db8::7]").port == 9100
    folder = tmp_path / "not" / "yet"
    assert parse_printer_url(f"file://{folder}/") == FileTarget(f"file://{folder}/", f"{folder}/")
    assert not (tmp_path / "not").exists()
    assert parse_printer_url("cups://Zebra_ZT411") == CupsTarget("cups://Zebra_ZT411", "Zebra_ZT411")
    serial_url = "serial:///dev/packline-no-such-port?baudrate=115200&parity=even&bytesize=7&stopbits=2"
    assert parse_printer_url(serial_url) == SerialSettings(
        serial_url, "/dev/packline-no-such-port", baudrate=115200, bytesize=7, parity="E", stopbits="2"
    )
    with pytest.raises(DeviceError) as err:  # only opening finds the port missing
        open_printer(serial_url)
    assert not isinstance(err.value, UnsupportedURL)


def test_tcp_default_port_is_9100() -> None:
    printer = open_printer("tcp://192.0.2.10")
    assert printer.url == "tcp://192.0.2.10"
    assert getattr(printer, "port", None) == 9100


def test_unknown_cups_queue_is_a_device_error() -> None:
    # Without CUPS tools: "not usable"; with them: "not found". Either way a DeviceError.
    with pytest.raises(DeviceError):
        open_printer("cups://Packline_No_Such_Queue")


def test_missing_serial_port_is_a_device_error() -> None:
    with pytest.raises(DeviceError):
        open_printer("serial:///dev/packline-no-such-port?baud=9600")
