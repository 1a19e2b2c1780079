"""The whole station: a scanner on a real pty, the simulated Zebra on TCP, the sync link on the
in-memory bus with a fake cloud (the real ``CloudLink`` over dicts) that acks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.scanner import Scan, decode_scan
from drivers.sim.scanner import SimulatedScanner
from drivers.sim.zebra import SimulatedZebra
from station.config import StationConfig
from station.engine import Verdict, VerdictKind
from station.errors import AlreadyRunning
from station.runtime import StationRuntime
from sync import contract as c
from sync.memory import MemoryBroker, MemoryBus
from tests.test_station_helpers import (
    STATION,
    Clock,
    FakeCloud,
    gtin14,
    order_acme,
    order_socks,
    order_tea,
    station_fields,
    wait_until,
)

K = VerdictKind


@dataclass
class Station:
    runtime: StationRuntime
    bus: MemoryBus
    verdicts: list[Verdict]
    changes: list[None]

    def wait_for(self, kind: VerdictKind, n: int = 1) -> list[Verdict]:
        wait_until(lambda: sum(v.kind == kind for v in self.verdicts) >= n, what=f"{n} x {kind}")
        return self.verdicts


StartStation = Callable[..., "Station"]


@pytest.fixture
def zebra() -> Iterator[SimulatedZebra]:
    with SimulatedZebra() as z:
        yield z


@pytest.fixture
def scanner() -> Iterator[SimulatedScanner]:
    with SimulatedScanner() as s:
        yield s


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def cloud(broker: MemoryBroker) -> FakeCloud:
    return FakeCloud(broker)


def config_for(
    tmp_path: Path, scanner: SimulatedScanner | None, zebra: SimulatedZebra, **kw: object
) -> StationConfig:
    fields = station_fields(
        tmp_path, scanner_url=scanner.url if scanner else None, printer_url=zebra.url, resend_after_s=0.2
    )
    fields.update(kw)
    return StationConfig.model_validate(fields)


@pytest.fixture
def start_station(
    tmp_path: Path, broker: MemoryBroker, zebra: SimulatedZebra, scanner: SimulatedScanner
) -> Iterator[StartStation]:
    started: list[StationRuntime] = []

    def start(*, bus: MemoryBus | None = None) -> Station:
        bus = bus or broker.bus(STATION)
        runtime = StationRuntime(
            config_for(tmp_path, scanner, zebra),
            bus=bus,
            data_dir=tmp_path,
            clock=Clock(),
            pump_interval_s=0.05,
        )
        verdicts: list[Verdict] = []
        changes: list[None] = []
        runtime.on_change(lambda v: verdicts.append(v) if v is not None else changes.append(v))
        runtime.start()
        started.append(runtime)
        # the port is flushed when opened: scans sent before would be lost, as with a real scanner
        wait_until(lambda: runtime.status().scanner == "ok", what="the scanner port open")
        return Station(runtime, bus, verdicts, changes)

    yield start
    for runtime in started:
        runtime.stop()


def test_the_packing_loop_from_pty_scanner_to_acked_event(
    start_station: StartStation, cloud: FakeCloud, scanner: SimulatedScanner, zebra: SimulatedZebra
) -> None:
    cloud.release(order_acme())
    cloud.release(order_tea())  # published before the station runs: it gets them by replay on connect
    st = start_station()
    wait_until(lambda: st.runtime.replica.last_feed_seq() == 2, what="the feed replayed")
    tea = gtin14("TEA-EG-100")

    scanner.scan_text("NT-20001")
    scanner.scan_gtin(tea)  # plain EAN on a lot-tracked line: refused
    scanner.scan_gs1({"01": tea, "17": "271231", "10": "L2406A"})
    scanner.scan_gs1({"01": tea, "10": "L2406A"}, symbology="]d2")  # GS1 DataMatrix, same lot
    st.wait_for(K.PACKED)
    assert [v.kind for v in st.verdicts] == [K.ORDER_OPENED, K.LOT_MISSING, K.ITEM_OK, K.ITEM_OK, K.PACKED]

    assert zebra.wait_for_jobs(1, 5.0) == [order_tea().label.zpl.encode()]
    wait_until(lambda: st.runtime.replica.outbox_depth() == 0, what="the ack trimmed the outbox")
    [packed] = cloud.packed()
    assert packed.order_id == "ORD-2" and packed.tracking_number == "1Z000000000000002"
    assert [(li.sku, li.qty, li.gtin, li.lots) for li in packed.lines] == [("TEA-EG-100", 2, tea, ["L2406A"])]
    assert cloud.store.duplicates == 0

    status = st.runtime.status()
    assert status.online and status.outbox_depth == 0 and status.last_feed_seq == 2
    assert (status.orders_open, status.orders_packed, status.current_order) == (1, 1, None)
    assert status.scanner == "ok" and status.last_error is None
    assert st.changes  # the TUI heard about the feed and the ack
    presence = cloud.store.presence.get(STATION)
    assert presence is None or presence["online"] is True  # the fake cloud does not subscribe to presence


def test_packing_while_disconnected_publishes_once_on_reconnect(
    start_station: StartStation, cloud: FakeCloud, scanner: SimulatedScanner, broker: MemoryBroker
) -> None:
    cloud.release(order_socks())
    st = start_station()
    wait_until(lambda: st.runtime.replica.last_feed_seq() == 1, what="the release")
    st.bus.disconnect()
    assert not st.runtime.status().online

    scanner.scan_text("ACME-10002")
    scanner.scan_gtin(gtin14("SOCK-MW-42"))
    st.wait_for(K.PACKED)
    time.sleep(0.3)  # several pump rounds and a resend period while offline
    assert st.runtime.replica.outbox_depth() == 1 and cloud.packed() == []
    [row] = st.runtime.replica.outbox_due(0, 10)
    event_id = row.id

    st.bus.reconnect()
    wait_until(lambda: st.runtime.replica.outbox_depth() == 0, what="publish + ack after reconnect")
    time.sleep(0.3)  # the pump keeps running: nothing is sent twice
    assert [env.id for env in cloud.store.applied.values()] == [event_id]
    assert cloud.store.duplicates == 0
    assert st.runtime.status().online


def test_a_lost_ack_means_a_resend_the_cloud_applies_once(
    start_station: StartStation, cloud: FakeCloud, scanner: SimulatedScanner, broker: MemoryBroker
) -> None:
    cloud.release(order_socks())
    st = start_station()
    wait_until(lambda: st.runtime.replica.last_feed_seq() == 1, what="the release")
    broker.hold = True  # from now on the test decides what gets delivered
    scanner.scan_text("ACME-10002")
    scanner.scan_gtin(gtin14("SOCK-MW-42"))
    st.wait_for(K.PACKED)
    wait_until(lambda: any(t.endswith("/events") for t, _ in broker.pending), what="the event on the wire")
    with broker._lock:
        first_event = next(i for i, (t, _) in enumerate(broker.pending) if t.endswith("/events"))
    broker.deliver(limit=first_event + 1)  # the event reaches the cloud, which applies it and acks ...
    assert len(cloud.packed()) == 1
    with broker._lock:
        assert any(t.endswith("/cmd") for t, _ in broker.pending)
        broker.pending.clear()  # ... but the ack (and any resend queued meanwhile) is lost
    assert st.runtime.replica.outbox_depth() == 1
    broker.hold = False  # the station resends after resend_after_s; the cloud answers "duplicate"
    wait_until(lambda: st.runtime.replica.outbox_depth() == 0, what="resend + ack")
    assert len(cloud.packed()) == 1 and cloud.store.duplicates >= 1


def test_a_restarted_station_resumes_the_open_order(
    tmp_path: Path, broker: MemoryBroker, cloud: FakeCloud, scanner: SimulatedScanner, zebra: SimulatedZebra
) -> None:
    cloud.release(order_acme())
    first = StationRuntime(config_for(tmp_path, scanner, zebra), bus=broker.bus("a"), data_dir=tmp_path)
    verdicts: list[Verdict] = []
    first.on_change(lambda v: verdicts.append(v) if v else None)
    first.start()
    wait_until(
        lambda: first.replica.last_feed_seq() == 1 and first.status().scanner == "ok", what="the release"
    )
    scanner.scan_text("ACME-10001")
    scanner.scan_gtin(gtin14("MUG-TI-450"))
    wait_until(lambda: len(verdicts) == 2, what="two verdicts")
    first.stop()

    second = StationRuntime(config_for(tmp_path, scanner, zebra), bus=broker.bus("b"), data_dir=tmp_path)
    try:
        second.start()
        assert second.status().current_order == "ACME-10001"
        assert second.engine.current_order().units == (1, 3)  # type: ignore[union-attr]
        for sku in ("MUG-TI-450", "TENT-2P-GRN"):
            second.submit_scan(_ean_scan(sku))  # the same queue the wedge path uses
        assert second.wait_idle(5.0)
        assert second.engine.last_verdict is not None and second.engine.last_verdict.kind == K.PACKED
        wait_until(lambda: len(cloud.packed()) == 1, what="the event")
        assert [(li.sku, li.qty) for li in cloud.packed()[0].lines] == [("TENT-2P-GRN", 1), ("MUG-TI-450", 2)]
    finally:
        second.stop()


def test_a_cancel_of_the_open_order_shows_at_once_without_a_scan(
    start_station: StartStation, cloud: FakeCloud, scanner: SimulatedScanner, zebra: SimulatedZebra
) -> None:
    acme = cloud.release(order_acme())
    st = start_station()
    wait_until(lambda: st.runtime.replica.last_feed_seq() == 1, what="the release")
    scanner.scan_text("ACME-10001")
    scanner.scan_gtin(gtin14("MUG-TI-450"))
    st.wait_for(K.ITEM_OK)
    cloud.cancel(acme.body["order_id"], reason="customer cancelled")
    [closed] = [v for v in st.wait_for(K.ORDER_CANCELLED) if v.kind == K.ORDER_CANCELLED]
    assert closed.message == "ORDER CANCELLED — do not pack ACME-10001"
    assert st.runtime.engine.current_order() is None and st.runtime.status().current_order is None
    assert zebra.jobs == [] and cloud.packed() == []


def test_one_station_runs_in_one_process_at_a_time(
    tmp_path: Path, broker: MemoryBroker, scanner: SimulatedScanner, zebra: SimulatedZebra
) -> None:
    first = StationRuntime(config_for(tmp_path, scanner, zebra), bus=broker.bus("a"), data_dir=tmp_path)
    probe = (
        "import sys; from pathlib import Path; from station.runtime import _claim_station\n"
        "try:\n    _claim_station(Path(sys.argv[1]), 'X')\nexcept Exception as e:\n    print(e); sys.exit(7)\n"
    )
    folder = str(tmp_path / "stations" / STATION)
    try:
        with pytest.raises(AlreadyRunning, match=f"station {STATION} is already running"):
            StationRuntime(config_for(tmp_path, scanner, zebra), bus=broker.bus("b"), data_dir=tmp_path)
        other = subprocess.run([sys.executable, "-c", probe, folder], capture_output=True, text=True, timeout=60)
        assert other.returncode == 7 and f"process {os.getpid()}" in other.stdout
    finally:
        first.stop()
    assert subprocess.run([sys.executable, "-c", probe, folder], timeout=60).returncode == 0  # free again
    StationRuntime(config_for(tmp_path, scanner, zebra), bus=broker.bus("c"), data_dir=tmp_path).stop()


def _ean_scan(sku: str) -> Scan:
    return decode_scan(("]E0" + gtin14(sku)[1:] + "\r").encode())


def test_requests_from_several_threads_are_handled_in_order(
    start_station: StartStation, cloud: FakeCloud, zebra: SimulatedZebra
) -> None:
    cloud.release(order_acme())
    st = start_station()
    wait_until(lambda: st.runtime.replica.last_feed_seq() == 1, what="the release")
    frames = [b"ACME-10001\r", b"4006381333931\r", b"4006381333948\r", b"4006381333948\r"]

    def wedge() -> None:
        for frame in frames:
            st.runtime.submit_frame(frame)

    t = threading.Thread(target=wedge)
    t.start()
    t.join()
    assert st.runtime.wait_idle(5.0)
    assert [v.kind for v in st.verdicts] == [K.ORDER_OPENED, K.ITEM_OK, K.ITEM_OK, K.ITEM_OK, K.PACKED]
    st.runtime.request_reprint()
    st.runtime.request_abort()
    assert st.runtime.wait_idle(5.0)
    assert [v.kind for v in st.verdicts[-2:]] == [K.REPRINTED, K.NOTHING_TO_ABORT]
    assert len(zebra.wait_for_jobs(2, 5.0)) == 2


def test_an_unplugged_scanner_shows_in_the_status(
    start_station: StartStation, scanner: SimulatedScanner
) -> None:
    st = start_station()
    assert st.runtime.status().scanner == "ok"
    scanner.close()
    wait_until(lambda: st.runtime.status().scanner.startswith("scanner: "), what="the scanner problem")


def test_stop_says_offline_and_releases_the_devices(
    start_station: StartStation, broker: MemoryBroker
) -> None:
    st = start_station()
    st.runtime.stop()
    retained = broker.retained[c.station_state_topic(STATION)]
    assert c.decode(retained).body["online"] is False
    with pytest.raises(RuntimeError, match="cannot be started again"):
        st.runtime.start()


def test_the_demo_packer_sets_an_unpackable_order_aside_and_packs_the_next(
    start_station: StartStation, cloud: FakeCloud, scanner: SimulatedScanner
) -> None:
    """One order the simulated packer cannot pack (a line without any barcode) must not keep
    every later order of the station waiting behind it."""
    from packline.wiring import SimulatedPacker

    socks = order_socks()
    no_barcode = socks.model_copy(update={
        "order_id": "ORD-NOBARCODE", "external_id": "ACME-NOBC",
        "lines": [socks.lines[0].model_copy(update={"gtins": []})],
    })
    cloud.release(no_barcode)
    cloud.release(order_acme())
    st = start_station()
    wait_until(lambda: st.runtime.replica.last_feed_seq() == 2, what="both releases")
    packer = SimulatedPacker(st.runtime, scanner)
    packer.start()
    try:
        wait_until(lambda: order_acme().order_id in packer.packed, timeout_s=20, what="the next order packed")
    finally:
        packer.stop()
    assert "no barcode to scan for SOCK-MW-42" in packer.failed["ORD-NOBARCODE"]
    assert [p.order_id for p in cloud.packed()] == [order_acme().order_id]
