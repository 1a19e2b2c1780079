"""The packing engine against a real replica and the simulated Zebra on TCP.

Scans are built with ``drivers.scanner.decode_scan`` from the bytes a scanner sends (the
pty path is exercised in test_station_runtime.py); labels go over TCP to ``SimulatedZebra``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.printer import LabelPrinter, PrinterStatus, open_printer
from drivers.scanner import Scan, decode_scan
from drivers.sim.zebra import SimulatedZebra
from station.engine import PackingEngine, Verdict, VerdictKind, judge_item
from station.replica import Replica
from sync import contract as c
from sync.contract import Envelope, OrderPackedBody
from tests.support import free_port
from tests.test_station_helpers import (
    SITE,
    STATION,
    T0,
    Clock,
    cancel_env,
    fixture_scan,
    gtin14,
    order_acme,
    order_socks,
    order_tea,
    release_env,
    released_body,
)

K = VerdictKind


def ean(sku: str) -> Scan:
    """An EAN-13 scan of a product as a real scanner sends it (AIM ]E0 + 13 digits + CR)."""
    return decode_scan(b"]E0" + gtin14(sku)[1:].encode() + b"\r")


def text(value: str) -> Scan:
    return decode_scan(b"]C0" + value.encode() + b"\r")


def gs1(gtin: str, *, lot: str | None = None, expiry: str | None = None) -> Scan:
    data = "01" + gtin + (f"17{expiry}" if expiry else "") + (f"10{lot}" if lot else "")
    return decode_scan(b"]C1" + data.encode() + b"\r")


@dataclass
class Bench:
    """A station bench: replica, engine, simulated Zebra, what the callbacks saw."""

    replica: Replica
    engine: PackingEngine
    zebra: SimulatedZebra
    clock: Clock
    events: list[Verdict] = field(default_factory=list)
    packed: list[Envelope] = field(default_factory=list)

    def outbox(self) -> list[Envelope]:
        return [c.decode(row.payload) for row in self.replica.outbox_due(0, 100)]

    def scan(self, *scans: Scan) -> list[Verdict]:
        return [self.engine.handle_scan(s) for s in scans]


def make_engine(
    replica: Replica,
    printer: LabelPrinter,
    clock: Clock,
    events: list[Verdict] | None = None,
    packed: list[Envelope] | None = None,
) -> PackingEngine:
    return PackingEngine(
        replica,
        printer,
        clock=clock,
        packer="PK-1001",
        on_event=events.append if events is not None else None,
        on_packed=packed.append if packed is not None else None,
    )


@pytest.fixture
def zebra() -> Iterator[SimulatedZebra]:
    with SimulatedZebra() as z:
        yield z


@pytest.fixture
def bench(tmp_path: Path, zebra: SimulatedZebra) -> Iterator[Bench]:
    clock = Clock()
    replica = Replica(tmp_path / "replica.db", station=STATION, site=SITE)
    for seq, body in enumerate((order_acme(), order_tea(), order_socks()), start=1):
        replica.apply_feed(release_env(seq, body))
    events: list[Verdict] = []
    packed: list[Envelope] = []
    engine = make_engine(replica, open_printer(zebra.url, timeout_s=2.0), clock, events, packed)
    yield Bench(replica, engine, zebra, clock, events, packed)
    replica.close()


def test_scan_order_then_items_prints_the_label_and_commits_order_packed(bench: Bench) -> None:
    verdicts = bench.scan(text("ACME-10001"), ean("TENT-2P-GRN"), ean("MUG-TI-450"))
    assert [v.kind for v in verdicts] == [K.ORDER_OPENED, K.ITEM_OK, K.ITEM_OK]
    assert (verdicts[2].sku, verdicts[2].scanned, verdicts[2].expected) == ("MUG-TI-450", 1, 2)
    assert bench.zebra.jobs == [] and bench.outbox() == []  # nothing before the last item
    bench.clock.advance(42)
    last = bench.engine.handle_scan(ean("MUG-TI-450"))
    assert last.kind == K.PACKED and last.ok and last.severity == "ok" and "ACME-10001" in last.message
    assert bench.zebra.wait_for_jobs(1, 2.0) == [order_acme().label.zpl.encode()]
    [env] = bench.outbox()
    assert bench.packed == [env] and env.type == c.ORDER_PACKED and env.station == STATION and env.seq == 1
    body = c.parse_body(env, OrderPackedBody)
    assert (
        body.order_id == "ORD-1" and body.packer == "PK-1001" and body.tracking_number == "1Z000000000000001"
    )
    assert [(li.sku, li.qty, li.gtin, li.lots) for li in body.lines] == [
        ("TENT-2P-GRN", 1, "04006381333931", []),
        ("MUG-TI-450", 2, "04006381333948", []),
    ]
    assert body.started_at == T0 and body.packed_at == bench.clock.now
    order = bench.replica.get_order("ORD-1")
    assert order is not None and order.status == "packed" and order.packed_event_id == str(env.id)
    assert bench.engine.current_order_id is None
    assert [v.kind for v in bench.events] == [K.ORDER_OPENED, K.ITEM_OK, K.ITEM_OK, K.ITEM_OK, K.PACKED]
    # every scan is recorded with its verdict
    assert [r.verdict for r in bench.replica.scans(order_id="ORD-1")] == ["order_opened"] + ["item_ok"] * 3


@pytest.mark.parametrize("ref", ["ORD-2", "NT-20001", "1Z000000000000002"])
def test_an_order_opens_by_order_id_external_id_or_tracking_number(bench: Bench, ref: str) -> None:
    [v] = bench.scan(text(ref))
    assert v.kind == K.ORDER_OPENED and v.order_id == "ORD-2" and (v.scanned, v.expected) == (0, 2)
    assert bench.replica.get_order("ORD-2").status == "packing"  # type: ignore[union-attr]


def test_lot_tracked_items_need_the_gs1_label_and_lots_reach_the_event(bench: Bench) -> None:
    tea = gtin14("TEA-EG-100")
    assert bench.scan(text("NT-20001"))[0].kind == K.ORDER_OPENED
    plain = bench.engine.handle_scan(decode_scan(b"7310001234568\r\n"))  # wedge-style EAN, no lot
    assert plain.kind == K.LOT_MISSING and not plain.ok and "GS1 label with lot" in plain.message
    fixture = decode_scan(fixture_scan("GS1-128 GTIN + lot"))
    assert (fixture.gtin, fixture.lot) == (tea, "L2406A")
    assert bench.engine.handle_scan(fixture).kind == K.ITEM_OK
    done = bench.engine.handle_scan(gs1(tea, lot="L2407B", expiry="270630"))
    assert done.kind == K.PACKED
    [env] = bench.outbox()
    [line] = c.parse_body(env, OrderPackedBody).lines
    assert (line.sku, line.qty, line.gtin, line.lots) == ("TEA-EG-100", 2, tea, ["L2406A", "L2407B"])


def test_every_bad_scan_is_loud_recorded_and_changes_nothing(bench: Bench) -> None:
    before_idle = bench.scan(ean("TENT-2P-GRN"), text("NO-SUCH-ORDER"))
    assert [v.kind for v in before_idle] == [K.NO_ORDER, K.ORDER_NOT_FOUND]
    assert bench.scan(text("ACME-10001"), ean("TENT-2P-GRN"))[1].kind == K.ITEM_OK
    bad_ean = decode_scan(fixture_scan("EAN-13 bad check digit"))
    assert bad_ean.error is not None
    verdicts = bench.scan(
        ean("SOCK-MW-42"),  # on another order
        ean("TENT-2P-GRN"),  # the line is complete
        bad_ean,
        text("HELLO-123"),
        text("NT-20001"),  # another order's slip mid-order
        gs1(gtin14("MUG-TI-450"), lot="M1", expiry="260531"),  # expired the day before "today" (2026-06-01)
    )
    kinds = [v.kind for v in verdicts]
    assert kinds == [K.WRONG_ITEM, K.TOO_MANY, K.BAD_SCAN, K.UNKNOWN_BARCODE, K.OTHER_ORDER, K.EXPIRED_LOT]
    assert all(not v.ok and v.severity == "error" for v in verdicts)
    messages = [v.message for v in verdicts]
    # the number printed under the EAN-13 the packer holds, not its GTIN-14 form
    assert messages[0] == "WRONG ITEM — 5901234123457 is not on this order" and messages[1].startswith("TOO MANY")
    assert messages[2] == "BAD SCAN: rescan" and messages[5].startswith("EXPIRED LOT")
    assert "finish ACME-10001 first" in messages[4]
    # nothing changed: the same order is open with the same counts, NT-20001 untouched, no label, no event
    order = bench.replica.get_order("ORD-1")
    assert order is not None and order.status == "packing" and order.units == (1, 3)
    assert bench.engine.current_order_id == "ORD-1"
    assert bench.replica.get_order("ORD-2").status == "released"  # type: ignore[union-attr]
    assert bench.zebra.jobs == [] and bench.outbox() == []
    recorded = [(r.verdict, r.ok) for r in bench.replica.scans()]
    assert recorded[-6:] == [(k.value, False) for k in kinds]
    assert len(recorded) == 10  # every scan, good and bad
    assert bench.replica.scans()[-4].message.startswith("BAD SCAN: rescan (")  # the decoder's reason kept
    # an expiry of today is still good
    assert bench.engine.handle_scan(gs1(gtin14("MUG-TI-450"), expiry="260601")).kind == K.ITEM_OK


def test_cancelled_and_packed_orders_cannot_be_opened(bench: Bench) -> None:
    bench.replica.apply_feed(cancel_env(4, "ORD-3", reason="customer cancelled"))
    [v] = bench.scan(text("ACME-10002"))
    assert v.kind == K.ORDER_CANCELLED and v.message == "ORDER CANCELLED — do not pack ACME-10002"
    assert v.severity == "error" and bench.engine.current_order_id is None
    bench.scan(text("NT-20001"), gs1(gtin14("TEA-EG-100"), lot="L1"), gs1(gtin14("TEA-EG-100"), lot="L1"))
    [again] = bench.scan(text("NT-20001"))
    assert again.kind == K.ALREADY_PACKED and not again.ok


def test_a_cancel_arriving_mid_pack_stops_the_packer_at_the_next_scan(bench: Bench) -> None:
    bench.scan(text("ACME-10001"), ean("TENT-2P-GRN"))
    bench.replica.apply_feed(cancel_env(4, "ORD-1", reason="address fraud"))
    [v] = bench.scan(ean("MUG-TI-450"))
    assert (
        v.kind == K.ORDER_CANCELLED
        and "do not pack ACME-10001" in v.message
        and "address fraud" in (v.hint or "")
    )
    assert bench.engine.current_order_id is None
    assert bench.replica.get_order("ORD-1").units == (1, 3)  # type: ignore[union-attr]
    assert bench.zebra.jobs == [] and bench.outbox() == []
    assert bench.scan(text("ACME-10002"))[0].kind == K.ORDER_OPENED  # the bench is free again


def test_printer_down_commits_nothing_then_reprint_commits_exactly_once(tmp_path: Path) -> None:
    clock = Clock()
    replica = Replica(tmp_path / "replica.db", station=STATION, site=SITE)
    replica.apply_feed(release_env(1, order_socks()))
    port = free_port()  # nothing listens here: connection refused
    engine = make_engine(replica, open_printer(f"tcp://127.0.0.1:{port}", timeout_s=1.0), clock)
    opened, last = engine.handle_scan(text("ACME-10002")), engine.handle_scan(ean("SOCK-MW-42"))
    assert opened.kind == K.ORDER_OPENED
    assert last.kind == K.PRINTER_ERROR and last.message.startswith("PRINTER: ") and "refused" in last.message
    assert replica.outbox_depth() == 0 and replica.get_order("ORD-3").status == "packing"  # type: ignore[union-attr]
    assert engine.reprint().kind == K.PRINTER_ERROR  # still down
    assert engine.handle_scan(ean("SOCK-MW-42")).kind == K.TOO_MANY  # complete, only unprinted
    with SimulatedZebra(port=port) as zebra:
        done = engine.reprint()
        assert done.kind == K.PACKED
        assert zebra.wait_for_jobs(1, 2.0) == [order_socks().label.zpl.encode()]
        assert replica.outbox_depth() == 1
        again = engine.reprint()  # the label jammed: print it again, commit nothing new
        assert again.kind == K.REPRINTED and again.order_id == "ORD-3"
        assert len(zebra.wait_for_jobs(2, 2.0)) == 2 and replica.outbox_depth() == 1
    replica.close()


def test_scanning_the_complete_order_again_retries_the_label(tmp_path: Path) -> None:
    clock = Clock()
    replica = Replica(tmp_path / "replica.db", station=STATION, site=SITE)
    replica.apply_feed(release_env(1, order_socks()))
    with SimulatedZebra(paper_out=True) as zebra:
        engine = make_engine(replica, open_printer(zebra.url, timeout_s=2.0), clock)
        engine.handle_scan(text("ACME-10002"))
        failed = engine.handle_scan(ean("SOCK-MW-42"))
        assert failed.kind == K.PRINTER_ERROR and failed.message == "PRINTER: paper out"
        assert zebra.jobs == [] and replica.outbox_depth() == 0  # not even sent to a printer without paper
        zebra.paper_out = False
        retried = engine.handle_scan(text("1Z000000000000003"))  # the tracking barcode on the slip
        assert retried.kind == K.PACKED and replica.outbox_depth() == 1
        assert zebra.wait_for_jobs(1, 2.0) == [order_socks().label.zpl.encode()]
    replica.close()


def test_a_cancel_that_lands_while_the_label_prints_is_still_reported(
    tmp_path: Path, zebra: SimulatedZebra
) -> None:
    replica = Replica(tmp_path / "replica.db", station=STATION, site=SITE)
    replica.apply_feed(release_env(1, order_socks()))

    class CancelWhilePrinting:
        """The feed's cancel reaches the replica while the label travels to the (real, simulated) printer."""

        url = zebra.url

        def __init__(self) -> None:
            self.inner = open_printer(zebra.url, timeout_s=2.0)

        def send(self, data: bytes) -> None:
            replica.apply_feed(cancel_env(2, "ORD-3"))
            self.inner.send(data)

        def status(self) -> PrinterStatus | None:
            return self.inner.status()

        def close(self) -> None:
            self.inner.close()

    engine = make_engine(replica, CancelWhilePrinting(), Clock())
    engine.handle_scan(text("ACME-10002"))
    v = engine.handle_scan(ean("SOCK-MW-42"))
    assert (
        v.kind == K.CANCELLED_WHILE_PRINTING and v.severity == "error" and "set ACME-10002 aside" in v.message
    )
    # the parcel exists: the event goes to the cloud, which turns it into an exception
    assert replica.outbox_depth() == 1 and replica.get_order("ORD-3").status == "packed"  # type: ignore[union-attr]
    replica.close()


def test_abort_puts_the_order_back(bench: Bench) -> None:
    assert bench.engine.abort_order().kind == K.NOTHING_TO_ABORT
    bench.scan(text("ACME-10001"), ean("TENT-2P-GRN"))
    v = bench.engine.abort_order()
    assert v.kind == K.ABORTED and v.severity == "warning" and bench.engine.current_order_id is None
    order = bench.replica.get_order("ORD-1")
    assert (
        order is not None
        and order.status == "released"
        and order.units == (0, 3)
        and order.started_at is None
    )
    assert [v.kind for v in bench.scan(text("ACME-10001"), ean("TENT-2P-GRN"))] == [K.ORDER_OPENED, K.ITEM_OK]


def test_engine_state_survives_a_restart(tmp_path: Path, zebra: SimulatedZebra) -> None:
    path = tmp_path / "replica.db"
    clock = Clock()
    replica = Replica(path, station=STATION, site=SITE)
    replica.apply_feed(release_env(1, order_acme()))
    engine = make_engine(replica, open_printer(zebra.url), clock)
    engine.handle_scan(text("ACME-10001"))
    engine.handle_scan(ean("MUG-TI-450"))
    replica.close()  # power cut / restart

    replica = Replica(path, station=STATION, site=SITE)
    engine = make_engine(replica, open_printer(zebra.url), clock)
    assert engine.current_order_id == "ORD-1"
    assert engine.current_order().units == (1, 3)  # type: ignore[union-attr]
    assert engine.handle_scan(ean("MUG-TI-450")).kind == K.ITEM_OK
    assert engine.handle_scan(ean("TENT-2P-GRN")).kind == K.PACKED
    [row] = replica.outbox_due(0, 10)
    body = c.parse_body(c.decode(row.payload), OrderPackedBody)
    assert [(li.sku, li.qty) for li in body.lines] == [("TENT-2P-GRN", 1), ("MUG-TI-450", 2)]
    replica.close()


def test_judge_item_is_a_pure_rule_over_the_order(bench: Bench) -> None:
    order = bench.replica.get_order("ORD-2")
    assert order is not None
    today = bench.clock.now.date()
    tea = gtin14("TEA-EG-100")
    ok, line = judge_item(order, gs1(tea, lot="L1", expiry="270101"), today)
    assert ok.kind == K.ITEM_OK and line is not None and line.sku == "TEA-EG-100" and ok.scanned == 1
    expired_and_no_lot, none = judge_item(order, gs1(tea, expiry="250101"), today)
    assert expired_and_no_lot.kind == K.EXPIRED_LOT and none is None
    case = released_body("X", "X", {"TEA-EG-100-CS6": 1})
    assert case.lines[0].gtins == ["17310001234565"]
    wrong, _ = judge_item(order, decode_scan(fixture_scan("GTIN-14 case of 6")), today)
    assert wrong.kind == K.WRONG_ITEM  # a case of six is another product, not six units


def test_the_packed_event_body_matches_the_contract(bench: Bench) -> None:
    bench.scan(text("ACME-10002"), ean("SOCK-MW-42"))
    [env] = bench.outbox()
    raw = json.loads(c.encode(env))
    assert raw["type"] == "order.packed" and raw["schema"] == 1 and raw["tenant"] == "acme-outdoor"
    assert raw["site"] == SITE and raw["station"] == STATION
    assert OrderPackedBody.model_validate(raw["body"]).lines[0].qty == 1


def test_numeric_order_references_open_orders_even_if_they_look_like_gtins(bench: Bench) -> None:
    # "96385074" is a valid EAN-8, "96385075" one with a bad check digit: both are also order numbers
    for seq, ext in ((4, "96385074"), (5, "96385075")):
        bench.replica.apply_feed(release_env(seq, released_body(f"ORD-{ext}", ext, {"SOCK-MW-42": 1})))
    assert decode_scan(b"96385074\r").gtin is not None and decode_scan(b"96385075\r").error is not None
    for ext in ("96385074", "96385075"):
        opened = bench.engine.handle_scan(decode_scan(ext.encode() + b"\r"))
        assert opened.kind == K.ORDER_OPENED and opened.external_id == ext
        assert bench.engine.handle_scan(ean("SOCK-MW-42")).kind == K.PACKED
    assert bench.engine.handle_scan(decode_scan(b"96385076\r")).kind == K.BAD_SCAN  # no such order: a misread


def test_an_order_another_station_packed_is_closed_here_and_refused_loudly(bench: Bench) -> None:
    """Every station of a site gets every release; once one packs it, the cloud's order.updated
    takes it off the others, even from under a packer who has it open."""
    bench.scan(text("ACME-10001"), ean("TENT-2P-GRN"))  # our packer has started on it
    shipped = c.OrderUpdatedBody(order_id="ORD-1", status="shipped", station="ST-DE-LEJ-2")
    bench.replica.apply_feed(c.new_envelope(c.ORDER_UPDATED, site=SITE, seq=4, body=shipped))
    order = bench.replica.get_order("ORD-1")
    assert order is not None and order.status == "cancelled" and "ST-DE-LEJ-2" in str(order.cancel_reason)
    assert "ORD-1" not in [o.order_id for o in bench.replica.open_orders()]
    [v] = bench.scan(ean("MUG-TI-450"))
    assert v.kind == K.ORDER_CANCELLED and v.message.startswith("PACKED ELSEWHERE") and not v.ok
    [again] = bench.scan(text("ACME-10001"))
    assert not again.ok and again.message.startswith("PACKED ELSEWHERE")
    assert bench.zebra.jobs == [] and bench.outbox() == []  # no second label, no second event
    # our own pack confirmed by the cloud changes nothing
    bench.scan(text("ACME-10002"), ean("SOCK-MW-42"))
    assert bench.replica.get_order("ORD-3").status == "packed"  # type: ignore[union-attr]
    own = c.OrderUpdatedBody(order_id="ORD-3", status="shipped", station=STATION)
    bench.replica.apply_feed(c.new_envelope(c.ORDER_UPDATED, site=SITE, seq=5, body=own))
    assert bench.replica.get_order("ORD-3").status == "packed"  # type: ignore[union-attr]
    # ...but a replica restored from a backup still holding an order this station shipped closes it
    bench.scan(text("NT-20001"))
    restored = c.OrderUpdatedBody(order_id="ORD-2", status="shipped", station=STATION)
    bench.replica.apply_feed(c.new_envelope(c.ORDER_UPDATED, site=SITE, seq=6, body=restored))
    assert bench.replica.get_order("ORD-2").status == "cancelled"  # type: ignore[union-attr]
    [v] = bench.scan(ean("TEA-EG-100"))
    assert v.kind == K.ORDER_CANCELLED and not v.ok
