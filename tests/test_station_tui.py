"""The packing screen driven as a packer would: keyboard-wedge scans typed with Pilot, F5, Esc, q.

The app runs on the same runtime as production (engine thread, simulated Zebra on TCP, sync link
on the in-memory bus with a fake cloud); assertions read the widgets' content.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from drivers.sim.zebra import SimulatedZebra
from station.config import StationConfig
from station.engine import VerdictKind
from station.runtime import StationRuntime
from station.tui import LinesTable, PackingApp
from sync.memory import MemoryBroker, MemoryBus
from tests.test_station_helpers import (
    STATION,
    Clock,
    FakeCloud,
    gtin14,
    order_acme,
    order_tea,
    station_fields,
    wait_until,
)

SIZE = (100, 30)


@pytest.fixture
def zebra() -> Iterator[SimulatedZebra]:
    with SimulatedZebra() as z:
        yield z


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def cloud(broker: MemoryBroker) -> FakeCloud:
    cloud = FakeCloud(broker)
    cloud.release(order_acme())
    cloud.release(order_tea())
    return cloud


@pytest.fixture
def bus(broker: MemoryBroker, cloud: FakeCloud) -> MemoryBus:
    return broker.bus(STATION)


@pytest.fixture
def runtime(tmp_path: Path, zebra: SimulatedZebra, bus: MemoryBus) -> Iterator[StationRuntime]:
    config = StationConfig.model_validate(station_fields(tmp_path, printer_url=zebra.url, resend_after_s=0.2))
    rt = StationRuntime(config, bus=bus, data_dir=tmp_path, clock=Clock())
    rt.start()
    wait_until(lambda: rt.replica.last_feed_seq() == 2, what="the feed")
    yield rt
    rt.stop()


async def settle(pilot: Pilot[None], predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the screen did not update in time")
        await pilot.pause(0.02)


async def scan(pilot: Pilot[None], *keys: str) -> None:
    """Type like a keyboard wedge: the characters, then Enter; wait until the engine answered."""
    app = pilot.app
    assert isinstance(app, PackingApp)
    before = app.last_verdict
    await pilot.press(*keys, "enter")
    await settle(pilot, lambda: app.last_verdict is not before)


def text_of(app: PackingApp, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


def rows(app: PackingApp) -> list[list[str]]:
    table = app.query_one(LinesTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


@pytest.mark.asyncio
async def test_wedge_scans_show_counts_and_loud_banners(
    runtime: StationRuntime, zebra: SimulatedZebra
) -> None:
    app = PackingApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        assert "No order open" in text_of(app, "#order")
        assert "ONLINE" in text_of(app, "#status") and "feed #2" in text_of(app, "#status")

        await scan(pilot, *"ACME-10001")
        assert "ORDER ACME-10001" in text_of(app, "#order") and "Erika Mustermann, Berlin DE" in text_of(
            app, "#order"
        )
        assert rows(app) == [
            ["", "TENT-2P-GRN", "Trekking tent 2P, green", "0", "1"],
            ["", "MUG-TI-450", "Titanium mug 450 ml", "0", "2"],
        ]

        await scan(pilot, *"4006381333931")  # the tent, EAN-13 as a wedge types it
        banner = app.query_one("#banner", Static)
        assert text_of(app, "#banner") == "OK TENT-2P-GRN 1/1" and banner.has_class("-ok")
        assert rows(app)[0][0] == "✔" and rows(app)[0][3] == "1"
        assert "1/3 items" in text_of(app, "#order")

        await scan(pilot, *"5901234123457")  # socks: not on this order
        assert text_of(app, "#banner").startswith("WRONG ITEM") and banner.has_class("-error")
        assert not banner.has_class("-ok")
        await scan(pilot, *"4006381333931")
        assert text_of(app, "#banner").startswith("TOO MANY") and banner.has_class("-error")
        await scan(pilot, *"5901234123458")  # the misread EAN of tests/fixtures/scans.json
        assert text_of(app, "#banner") == "BAD SCAN: rescan" and banner.has_class("-error")
        assert "check digit" in text_of(app, "#hint").lower()
        assert rows(app)[1][3] == "0"  # bad scans changed nothing

        await scan(pilot, *"4006381333948")
        await scan(pilot, *"4006381333948")
        assert text_of(app, "#banner") == "PACKED ACME-10001 — label printed" and banner.has_class("-ok")
        assert "No order open" in text_of(app, "#order") and rows(app) == []
        assert zebra.wait_for_jobs(1, 5.0) == [order_acme().label.zpl.encode()]
        await settle(pilot, lambda: runtime.replica.outbox_depth() == 0)
        app._refresh_status()
        assert "outbox 0" in text_of(app, "#status") and "packed 1" in text_of(app, "#status")


@pytest.mark.asyncio
@pytest.mark.parametrize("gs_key", ["f8", "ctrl+right_square_bracket"])
async def test_gs1_scans_keep_the_gs_separator(runtime: StationRuntime, gs_key: str) -> None:
    tea = gtin14("TEA-EG-100")
    app = PackingApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await scan(pilot, *"NT-20001")
        await scan(pilot, *tea)  # plain GTIN on a lot-tracked line
        assert text_of(app, "#banner").startswith("LOT NEEDED")
        # GS1: (01) GTIN (10) lot <GS> (17) expiry; without the GS the lot would swallow the date
        await scan(pilot, *("01" + tea + "10L2406A"), gs_key, *"17271231")
        assert text_of(app, "#banner") == "OK TEA-EG-100 1/2"
    [rec] = [r for r in runtime.replica.scans(order_id="ORD-2") if r.verdict == "item_ok"]
    assert (rec.lot, str(rec.expiry)) == ("L2406A", "2027-12-31")


@pytest.mark.asyncio
async def test_escape_twice_aborts_and_f5_reprints(runtime: StationRuntime, zebra: SimulatedZebra) -> None:
    app = PackingApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("escape")
        assert text_of(app, "#banner") == "No order open"
        await scan(pilot, *"ACME-10001")
        await scan(pilot, *"4006381333931")
        await pilot.press("escape")
        assert text_of(app, "#banner").startswith("ABORT ACME-10001? Press Esc again")
        await scan(pilot, *"4006381333948")  # a scan keeps packing and disarms the abort
        assert text_of(app, "#banner") == "OK MUG-TI-450 1/2"
        await pilot.press("escape")
        before = app.last_verdict
        await pilot.press("escape")
        await settle(pilot, lambda: app.last_verdict is not before)
        assert app.last_verdict is not None and app.last_verdict.kind == VerdictKind.ABORTED
        assert text_of(app, "#banner").startswith("ABORTED ACME-10001")
        assert "No order open" in text_of(app, "#order")
        assert runtime.replica.get_order("ORD-1").units == (0, 3)  # type: ignore[union-attr]

        before = app.last_verdict
        await pilot.press("f5")
        await settle(pilot, lambda: app.last_verdict is not before)
        assert text_of(app, "#banner").startswith("Nothing to print")
        for keys in ("ACME-10001", "4006381333931", "4006381333948", "4006381333948"):
            await scan(pilot, *keys)
        before = app.last_verdict
        await pilot.press("f5")
        await settle(pilot, lambda: app.last_verdict is not before)
        assert text_of(app, "#banner") == "REPRINTED label of ACME-10001"
        assert len(zebra.wait_for_jobs(2, 5.0)) == 2


@pytest.mark.asyncio
async def test_q_alone_quits_but_a_scan_with_q_does_not(runtime: StationRuntime, bus: MemoryBus) -> None:
    app = PackingApp(runtime)
    async with app.run_test(size=SIZE) as pilot:
        await scan(pilot, *"qq-1")  # typed fast, like a wedge: an (unknown) order reference
        assert text_of(app, "#banner") == "ORDER NOT FOUND: qq-1"
        bus.disconnect()
        app._refresh_status()
        assert "OFFLINE" in text_of(app, "#status")
        await pilot.press("q")
        await pilot.pause(app.quit_key_delay_s + 0.2)
        assert app.return_code == 0
        assert not app.is_running


@pytest.mark.asyncio
async def test_a_new_screen_resumes_the_open_order(runtime: StationRuntime) -> None:
    async with PackingApp(runtime).run_test(size=SIZE) as pilot:
        await scan(pilot, *"ORD-1")  # the order id works as well as the external id
        await scan(pilot, *"4006381333948")
    app = PackingApp(runtime)  # e.g. the terminal was closed and opened again
    async with app.run_test(size=SIZE):
        assert text_of(app, "#banner") == "RESUMED ORDER ACME-10001 — keep scanning"
        assert "1/3 items" in text_of(app, "#order")
        assert [r[3] for r in rows(app)] == ["0", "1"]


@pytest.mark.asyncio
async def test_a_resumed_order_that_is_fully_scanned_says_to_print(runtime: StationRuntime,
                                                                    zebra: SimulatedZebra) -> None:
    zebra.paper_out = True  # the label cannot print: the order stays open, every unit scanned
    async with PackingApp(runtime).run_test(size=SIZE) as pilot:
        for keys in ("ACME-10001", "4006381333931", "4006381333948", "4006381333948"):
            await scan(pilot, *keys)
    app = PackingApp(runtime)
    async with app.run_test(size=SIZE):
        assert text_of(app, "#banner") == "RESUMED ORDER ACME-10001 — press F5 to print its label"
        assert "3/3 items" in text_of(app, "#order")
