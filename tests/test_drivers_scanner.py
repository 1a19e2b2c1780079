"""Scanner driver: framing, decoding and the whole serial path over a real pty."""

from __future__ import annotations

import datetime
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from drivers import (
    DeviceError,
    Scan,
    ScanFramer,
    UnsupportedURL,
    decode_scan,
    open_scanner,
    parse_scanner_url,
)
from drivers.scanner import Scanner
from drivers.sim import SimulatedScanner
from drivers.transport.serialport import SerialSettings
from tests.support import FIXTURES

CASES: list[dict[str, Any]] = json.loads((FIXTURES / "scans.json").read_text())
CASE_IDS = [case["label"] for case in CASES]
STREAM = b"".join(case["bytes"].encode("latin-1") for case in CASES)


def _frame_of(case: dict[str, Any]) -> bytes:
    """The bytes a framer should deliver: without leading junk and without terminator."""
    data: bytes = case["bytes"].encode("latin-1")
    return data.lstrip(b"\x00").rstrip(b"\r\n")


EXPECTED_FRAMES = [_frame_of(case) for case in CASES]


def assert_matches(scan: Scan, case: dict[str, Any]) -> None:
    assert scan.raw == _frame_of(case)
    assert scan.gtin == case.get("gtin")
    assert scan.lot == case.get("lot")
    assert scan.expiry == (datetime.date.fromisoformat(case["expiry"]) if "expiry" in case else None)
    assert scan.sscc == case.get("sscc")
    if "error" in case:
        assert scan.error is not None and case["error"] in scan.error
        assert not scan.ok
    else:
        assert scan.error is None
        assert scan.ok


# -- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_fixture_frames_to_one_frame_and_decodes(case: dict[str, Any]) -> None:
    frames = ScanFramer().feed(case["bytes"].encode("latin-1"))
    assert frames == [_frame_of(case)]
    assert_matches(decode_scan(frames[0]), case)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_decode_scan_tolerates_junk_and_terminator_itself(case: dict[str, Any]) -> None:
    assert_matches(decode_scan(case["bytes"].encode("latin-1")), case)


def test_aim_prefix_is_split_off_and_gs_is_kept() -> None:
    scan = decode_scan(b"]C1010731000123456810L2406A\x1d17271231")
    assert scan.symbology == "]C1"
    assert scan.text == "010731000123456810L2406A\x1d17271231"
    plain = decode_scan(b"4006381333948")
    assert plain.symbology is None and plain.text == "4006381333948"


@pytest.mark.parametrize(
    ("frame", "gtin", "lot", "expiry", "sscc", "error"),
    [
        # an order/slip barcode: text for the station to judge, no error
        (b"]C0ACME-10001", None, None, None, None, None),
        (b"ACME-10001", None, None, None, None, None),
        (b"]Q1https://example.com/track", None, None, None, None, None),
        # a numeric Code 128 is not a GTIN carrier
        (b"]C05901234123458", None, None, None, None, None),
        # UPC-A as 12 digits without AIM id (keyboard wedge) -> padded GTIN-14
        (b"036000291452", "00036000291452", None, None, None, None),
        # UPC-E under ]E0 (8 digits) is expanded to UPC-A
        (b"]E004252614", "00042100005264", None, None, None, None),
        (b"]E412345670", "00000012345670", None, None, None, None),
        # EAN-13 + 2-digit add-on
        (b"]E3400638133393112", "04006381333931", None, None, None, None),
        # plain digits with a bad check digit
        (b"4006381333949", None, None, None, None, "check digit"),
        (b"]I017310001234566", None, None, None, None, "check digit"),
        (b"]E00036000291453", None, None, None, None, "check digit"),
        # ITF that is not GTIN-shaped is just text
        (b"]I0123456", None, None, None, None, None),
        # broken GS1 data under a GS1 symbology
        (b"]C10107310001234569", None, None, None, None, "check digit"),
        (b"]C100340063810000000019", None, None, None, None, "check digit"),
        (b"]C1garbage", None, None, None, None, "Application Identifier"),
        (b"]C101073100012345681728063110ABC", None, None, None, None, "17"),
        (b"]E01234567", None, None, None, None, "digits"),
        (b"]E0", None, None, None, None, "without data"),
        # expiry day 00 = last day of the month (GS1 General Specifications)
        (b"]d2010731000123457517280200", "07310001234575", None, datetime.date(2028, 2, 29), None, None),
        # GS1 DataBar, GS1 QR
        (b"]e0010731000123456810X", "07310001234568", "X", None, None, None),
        (b"]Q3010731000123457510LOT-9", "07310001234575", "LOT-9", None, None, None),
        # GS1 Digital Link in a GS1 QR code
        (b"]Q3https://id.gs1.org/01/07310001234568/10/ABC", "07310001234568", "ABC", None, None, None),
        # unprefixed GS1 element strings (scanner without AIM ids), with or without leading FNC1/GS
        (b"0107310001234568\x1d10X", "07310001234568", "X", None, None, None),
        (b"\x1d010731000123456817271231", "07310001234568", None, datetime.date(2027, 12, 31), None, None),
        (b"00340063810000000018", None, None, None, "340063810000000018", None),
        # Latin-1 text from a Code 128 symbol
        ("]C0Müller".encode("latin-1"), None, None, None, None, None),
    ],
)
def test_decode_cases(
    frame: bytes,
    gtin: str | None,
    lot: str | None,
    expiry: datetime.date | None,
    sscc: str | None,
    error: str | None,
) -> None:
    scan = decode_scan(frame)
    assert (scan.gtin, scan.lot, scan.expiry, scan.sscc) == (gtin, lot, expiry, sscc)
    if error is None:
        assert scan.error is None and scan.ok
    else:
        assert scan.error is not None and error in scan.error and not scan.ok


def test_latin1_text_survives() -> None:
    assert decode_scan("]C0Müller".encode("latin-1")).text == "Müller"
    assert decode_scan("]Q1Grüße".encode()).text == "Grüße"


# -- framing ---------------------------------------------------------------------------------


def test_whole_fixture_stream_in_one_feed() -> None:
    assert ScanFramer().feed(STREAM) == EXPECTED_FRAMES


@pytest.mark.parametrize("seed", range(200))
def test_random_split_points_give_the_same_frames(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 40)))
    framer = ScanFramer()
    frames: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(STREAM)], strict=True):
        frames += framer.feed(STREAM[start:end])
    assert frames == EXPECTED_FRAMES
    assert framer.pending == 0


def test_one_byte_at_a_time() -> None:
    framer = ScanFramer()
    frames = [frame for i in range(len(STREAM)) for frame in framer.feed(STREAM[i : i + 1])]
    assert frames == EXPECTED_FRAMES


def test_cr_lf_split_across_feeds_is_one_terminator() -> None:
    framer = ScanFramer()
    assert framer.feed(b"4006381333948\r") == [b"4006381333948"]
    assert framer.feed(b"\n") == []
    assert framer.feed(b"\n]E04006381333931\n") == [b"]E04006381333931"]  # LF alone terminates too
    assert framer.pending == 0


def test_terminators_and_empty_lines() -> None:
    assert ScanFramer().feed(b"A\rB\nC\r\nD\r\r\n\n\rE") == [b"A", b"B", b"C", b"D"]


def test_leading_junk_dropped_gs_kept() -> None:
    framer = ScanFramer()
    assert framer.feed(b"\x00\x00\xff\x7f\x1b]E04006381333931\r") == [b"]E04006381333931"]
    assert framer.feed(b"\x00\x1d01073100012345681\x1d0X\r") == [b"\x1d01073100012345681\x1d0X"]
    # control bytes inside the data are data (ISO 15434 RS/EOT envelopes in DataMatrix)
    assert framer.feed(b"]d2[)>\x1e06\x1d1PX\x1e\x04\r") == [b"]d2[)>\x1e06\x1d1PX\x1e\x04"]


def test_flush_and_frame_size_limit() -> None:
    framer = ScanFramer(max_frame_bytes=8)
    assert framer.feed(b"123") == []
    assert framer.flush() == b"123"
    assert framer.flush() is None
    assert framer.feed(b"0123456789AB\r") == [b"01234567", b"89AB"]


# -- the serial path over a real pty ---------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[SimulatedScanner]:
    with SimulatedScanner() as scanner:
        yield scanner


@pytest.fixture
def scanner(sim: SimulatedScanner) -> Iterator[Scanner]:
    reader = open_scanner(sim.url)
    yield reader
    reader.close()


def test_url_of_simulator() -> None:
    with SimulatedScanner(baud=19200) as scanner_sim:
        assert scanner_sim.url.startswith("serial:///dev/")
        assert scanner_sim.url.endswith("?baud=19200")


def test_every_fixture_over_the_pty(sim: SimulatedScanner, scanner: Scanner) -> None:
    for case in CASES:
        sim.send_raw(case["bytes"].encode("latin-1"))
    for case in CASES:
        scan = scanner.read(timeout_s=2)
        assert scan is not None, case["label"]
        assert_matches(scan, case)
    assert scanner.read(timeout_s=0) is None


def test_every_fixture_over_the_pty_one_byte_per_write(sim: SimulatedScanner, scanner: Scanner) -> None:
    for byte in STREAM:
        sim.send_raw(bytes([byte]))
    scans = [scanner.read(timeout_s=2) for _ in CASES]
    for scan, case in zip(scans, CASES, strict=True):
        assert scan is not None, case["label"]
        assert_matches(scan, case)


def test_reads_interleaved_with_writes(sim: SimulatedScanner, scanner: Scanner) -> None:
    for case in CASES:
        data = case["bytes"].encode("latin-1")
        sim.send_raw(data[:3])
        assert scanner.read(timeout_s=0) is None  # incomplete frame: nothing yet
        sim.send_raw(data[3:])
        scan = scanner.read(timeout_s=2)
        assert scan is not None
        assert_matches(scan, case)


@pytest.mark.parametrize(
    ("gtin", "symbology", "expected"),
    [
        ("4006381333931", "]E0", "04006381333931"),
        ("04006381333931", "]E0", "04006381333931"),
        ("036000291452", "]E0", "00036000291452"),
        ("12345670", "]E4", "00000012345670"),
        ("00000012345670", "]E4", "00000012345670"),
        ("17310001234565", "]I0", "17310001234565"),
    ],
)
def test_scan_gtin_frames_like_real_scanner(
    sim: SimulatedScanner, scanner: Scanner, gtin: str, symbology: str, expected: str
) -> None:
    sim.scan_gtin(gtin)
    scan = scanner.read(timeout_s=2)
    assert scan is not None
    assert (scan.symbology, scan.gtin, scan.error) == (symbology, expected, None)


def test_scan_gtin_rejects_non_gtin(sim: SimulatedScanner) -> None:
    with pytest.raises(ValueError):
        sim.scan_gtin("12345")


def test_scan_gs1_puts_fixed_length_ais_first(sim: SimulatedScanner, scanner: Scanner) -> None:
    sim.scan_gs1({"10": "L2406A", "01": "07310001234568", "17": "271200"})
    scan = scanner.read(timeout_s=2)
    assert scan is not None
    assert scan.raw == b"]C1010731000123456817271200" + b"10L2406A"  # no GS: lot is last
    assert (scan.gtin, scan.lot, scan.expiry, scan.error) == (
        "07310001234568",
        "L2406A",
        datetime.date(2027, 12, 31),
        None,
    )
    sim.scan_gs1({"10": "L1", "21": "SER9", "01": "07310001234568"}, symbology="]d2")
    scan = scanner.read(timeout_s=2)
    assert scan is not None
    assert scan.raw == b"]d20107310001234568" + b"10L1\x1d21SER9"
    assert (scan.symbology, scan.lot, scan.error) == ("]d2", "L1", None)
    with pytest.raises(ValueError):
        sim.scan_gs1({"0": "x"})


def test_scan_text_is_code128_without_error(sim: SimulatedScanner, scanner: Scanner) -> None:
    sim.scan_text("ACME-10001")
    scan = scanner.read(timeout_s=2)
    assert scan is not None
    assert (scan.raw, scan.symbology, scan.text, scan.gtin, scan.error) == (
        b"]C0ACME-10001",
        "]C0",
        "ACME-10001",
        None,
        None,
    )


def test_scanner_without_aim_and_cr_lf() -> None:
    with SimulatedScanner(aim=False, terminator=b"\r\n") as plain:
        reader = open_scanner(plain.url)
        try:
            plain.scan_gtin("036000291452")
            plain.scan_gs1({"01": "07310001234568", "10": "L7"})
            first, second = reader.read(timeout_s=2), reader.read(timeout_s=2)
            assert first is not None and second is not None
            assert (first.symbology, first.gtin) == (None, "00036000291452")
            assert (second.symbology, second.gtin, second.lot) == (None, "07310001234568", "L7")
            assert reader.read(timeout_s=0.02) is None  # the LF after CR is no extra frame
        finally:
            reader.close()


def test_idle_framing_for_scanners_without_terminator() -> None:
    with SimulatedScanner(terminator=b"") as bare:
        reader = open_scanner(bare.url + "&idle_ms=30")
        try:
            bare.scan_text("TOTE-7")
            scan = reader.read(timeout_s=2)
            assert scan is not None and scan.text == "TOTE-7"
        finally:
            reader.close()


def test_read_timeout_returns_none_quickly(scanner: Scanner) -> None:
    started = time.monotonic()
    assert scanner.read(timeout_s=0.1) is None
    assert 0.09 <= time.monotonic() - started < 0.5


def test_close_wakes_a_blocked_reader(scanner: Scanner) -> None:
    outcome: list[BaseException | Scan | None] = []

    def worker() -> None:
        try:
            outcome.append(scanner.read())
        except DeviceError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.05)
    scanner.close()
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], DeviceError)
    with pytest.raises(DeviceError, match="closed"):
        scanner.read(timeout_s=0)
    scanner.close()  # idempotent


def test_unplugged_scanner_raises(sim: SimulatedScanner, scanner: Scanner) -> None:
    sim.close()
    with pytest.raises(DeviceError):
        scanner.read(timeout_s=1)


def test_port_is_opened_exclusively(sim: SimulatedScanner, scanner: Scanner) -> None:
    with pytest.raises(DeviceError, match="lock"):
        open_scanner(sim.url)


@pytest.mark.parametrize(
    "url",
    [
        "sim://",
        "usb://scanner",
        "/dev/ttyACM0",
        "serial://",
        "serial://dev/ttyACM0",
        "serial:///dev/ttyACM0?speed=9600",
        "serial:///dev/ttyACM0?baud=fast",
        "serial:///dev/ttyACM0?baud=9600&baudrate=9600",
        "serial:///dev/ttyACM0?parity=X",
        "serial:///dev/ttyACM0?parity=Nonsense",
        "serial:///dev/ttyACM0?baud=abc",
        "serial:///dev/ttyACM0?baud=-5",
        "serial:///dev/ttyACM0?baud=0",
        "serial:///dev/ttyACM0?baud=123456789",
        "serial:///dev/ttyACM0?baud=",
        "serial:///dev/ttyACM0?bogus=1",
        "serial:///dev/ttyACM0?idle_ms=0",
        "serial:///dev/ttyACM0?idle_ms=600000",
        "tcp://10.0.0.7:9100",
    ],
)
def test_bad_scanner_urls(url: str) -> None:
    with pytest.raises(UnsupportedURL) as parsed:
        parse_scanner_url(url)
    with pytest.raises(UnsupportedURL) as opened:
        open_scanner(url)
    assert str(opened.value) == str(parsed.value)  # the opener's check IS the parser


def test_unknown_scanner_option_names_the_allowed_ones() -> None:
    with pytest.raises(UnsupportedURL) as err:
        parse_scanner_url("serial:///dev/ttyACM0?bogus=1")
    assert str(err.value) == (
        "unknown option 'bogus' in 'serial:///dev/ttyACM0?bogus=1' "
        "(allowed options: baud, baudrate, bytesize, parity, stopbits, idle_ms)"
    )


def test_parse_scanner_url_opens_nothing_and_open_uses_what_it_parsed() -> None:
    missing = "serial:///dev/packline-no-such-port?baud=115200&parity=O&idle_ms=40"
    assert parse_scanner_url(missing) == SerialSettings(
        missing, "/dev/packline-no-such-port", baudrate=115200, parity="O", idle_s=0.04
    )
    with SimulatedScanner() as sim_port:
        url = sim_port.url.replace("baud=9600", "baud=19200&bytesize=7&parity=even&stopbits=2")
        reader = open_scanner(url)
        try:
            port = reader._port  # type: ignore[attr-defined]
            assert (port.baudrate, port.bytesize, port.parity, port.stopbits) == (19200, 7, "E", 2)
        finally:
            reader.close()


def test_missing_port_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="/dev/packline-no-such-port"):
        open_scanner("serial:///dev/packline-no-such-port?baud=9600")


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"]C1010400638133393117261399\r", "GS1 (17) expiry date is not valid in '17261399'"),
        (b"]C10104006381333931\x1d17261399\r", "GS1 (17) expiry date is not valid in '17261399'"),
    ],
)
def test_a_bad_gs1_field_is_named_for_the_packer_not_as_a_pattern(frame: bytes, error: str) -> None:
    scan = decode_scan(frame)
    assert scan.error == error and "pattern" not in scan.error
