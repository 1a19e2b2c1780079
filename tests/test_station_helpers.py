"""Builders shared by the station tests: release envelopes from the sample data, a fake cloud on
the in-memory bus (the real ``sync.link.CloudLink`` over a dict store), a settable clock.

Kept in a ``test_station_*`` module so the station tests need nothing outside their files;
its own tests check the builders themselves.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sync import contract as c
from sync.contract import AckBody, Envelope, OrderPackedBody, OrderReleasedBody
from sync.link import CloudLink, FeedEntry
from sync.memory import MemoryBroker
from tests.support import FIXTURES, SAMPLE_DATA

STATION = "ST-DE-LEJ-1"
SITE = "DE-LEJ"
T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


@cache
def products() -> dict[str, dict[str, Any]]:
    return {p["sku"]: p for p in json.loads((SAMPLE_DATA / "products.json").read_text())}


@cache
def fixture_scans() -> list[dict[str, Any]]:
    scans: list[dict[str, Any]] = json.loads((FIXTURES / "scans.json").read_text())
    return scans


def fixture_scan(label_starts: str) -> bytes:
    """The raw bytes of a fixture scan from tests/fixtures/scans.json, by the start of its label."""
    for s in fixture_scans():
        if s["label"].startswith(label_starts):
            return str(s["bytes"]).encode("latin-1")
    raise KeyError(label_starts)


def gtin14(sku: str) -> str:
    return str(products()[sku]["gtins"][0]).zfill(14)


def label_zpl(name: str, tracking: str) -> str:
    return f"^XA^CI28^PW812^LL1218^FO50,50^A0N,40,40^FD{name}^FS^FO50,150^BCN,120,Y,N,N^FD{tracking}^FS^XZ"


def released_body(
    order_id: str,
    external_id: str,
    lines: dict[str, int],
    *,
    tenant: str | None = None,
    tracking: str | None = None,
    ship_to: tuple[str, str, str] = ("Erika Mustermann", "Berlin", "DE"),
) -> OrderReleasedBody:
    """An order.released body with real products (name, GTINs, lot tracking) from the sample data."""
    prods = [products()[sku] for sku in lines]
    tracking = tracking or f"1Z{zlib.crc32(order_id.encode()):012d}"
    return OrderReleasedBody(
        order_id=order_id,
        external_id=external_id,
        tenant=tenant or prods[0]["tenant"],
        ship_to=c.ShipToSummary(name=ship_to[0], city=ship_to[1], country=ship_to[2]),
        lines=[
            c.ReleasedLine(
                sku=p["sku"],
                name=p["name"],
                qty=qty,
                gtins=[str(g).zfill(14) for g in p["gtins"]],
                lot_tracked=bool(p.get("lot_tracked", False)),
            )
            for p, qty in zip(prods, lines.values(), strict=True)
        ],
        label=c.LabelInfo(
            carrier="sandbox",
            service="standard",
            tracking_number=tracking,
            zpl=label_zpl(ship_to[0], tracking),
        ),
    )


def release_env(seq: int, body: OrderReleasedBody, *, site: str = SITE) -> Envelope:
    return c.new_envelope(c.ORDER_RELEASED, site=site, seq=seq, tenant=body.tenant, body=body)


def cancel_env(
    seq: int, order_id: str, *, reason: str | None = "customer cancelled", site: str = SITE
) -> Envelope:
    return c.new_envelope(
        c.ORDER_CANCELLED, site=site, seq=seq, body=c.OrderCancelledBody(order_id=order_id, reason=reason)
    )


# The three orders most tests use (real GTINs from packline/sample_data/products.json).
def order_acme() -> OrderReleasedBody:
    return released_body(
        "ORD-1", "ACME-10001", {"TENT-2P-GRN": 1, "MUG-TI-450": 2}, tracking="1Z000000000000001"
    )


def order_tea() -> OrderReleasedBody:
    return released_body("ORD-2", "NT-20001", {"TEA-EG-100": 2}, tracking="1Z000000000000002")


def order_socks() -> OrderReleasedBody:
    return released_body("ORD-3", "ACME-10002", {"SOCK-MW-42": 1}, tracking="1Z000000000000003")


@dataclass
class Clock:
    """A settable clock for the engine (aware datetimes)."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeCloudStore:
    """The cloud side of the contract in a few dicts (the real one lives in cloud/)."""

    applied: dict[uuid.UUID, Envelope] = field(default_factory=dict)
    duplicates: int = 0
    feed: list[FeedEntry] = field(default_factory=list)
    published: set[int] = field(default_factory=set)
    dead: list[str] = field(default_factory=list)
    presence: dict[str, dict[str, object]] = field(default_factory=dict)

    def apply_station_event(self, env: Envelope) -> AckBody:
        if env.id in self.applied:
            self.duplicates += 1
            return AckBody(event_id=env.id, status="duplicate")
        self.applied[env.id] = env
        return AckBody(event_id=env.id, status="applied")

    def feed_since(self, site: str, from_seq: int, limit: int) -> list[FeedEntry]:
        return [e for e in self.feed if e.site == site and e.seq > from_seq][:limit]

    def unpublished_feed(self, limit: int) -> list[FeedEntry]:
        return [e for e in self.feed if e.seq not in self.published][:limit]

    def mark_feed_published(self, entries: Any) -> None:
        self.published.update(e.seq for e in entries)

    def record_dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        self.dead.append(reason)

    def record_presence(self, station: str, site: str, payload: dict[str, object]) -> None:
        self.presence[station] = payload


class FakeCloud:
    """``sync.link.CloudLink`` on a MemoryBus, ingesting synchronously (no ingest thread)."""

    def __init__(self, broker: MemoryBroker, *, site: str = SITE) -> None:
        self.site = site
        self.bus = broker.bus("cloud")
        self.store = FakeCloudStore()
        self.link = CloudLink(bus=self.bus, store=self.store)
        self.bus.subscribe(c.cloud_events_subscription(), self.link.handle)

    def _publish(self, type_: str, body: Any, tenant: str | None = None) -> Envelope:
        seq = len(self.store.feed) + 1
        env = c.new_envelope(type_, site=self.site, seq=seq, tenant=tenant, body=body)
        self.store.feed.append(FeedEntry(self.site, seq, c.encode(env)))
        self.link.publish_feed()
        return env

    def release(self, body: OrderReleasedBody) -> Envelope:
        return self._publish(c.ORDER_RELEASED, body, body.tenant)

    def cancel(self, order_id: str, reason: str = "customer cancelled") -> Envelope:
        return self._publish(c.ORDER_CANCELLED, c.OrderCancelledBody(order_id=order_id, reason=reason))

    def packed(self) -> list[OrderPackedBody]:
        return [
            c.parse_body(env, OrderPackedBody)
            for env in self.store.applied.values()
            if env.type == c.ORDER_PACKED
        ]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def station_fields(tmp: Path, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "station_id": STATION,
        "site": SITE,
        "cloud_url": "http://127.0.0.1:8000",
        "mqtt_url": "mqtt://127.0.0.1:1883",
        "mqtt_username": STATION,
        "mqtt_password": "s3cret-pw",
        "scanner_url": None,
        "printer_url": f"file://{tmp}/labels/",
        "resend_after_s": 5.0,
        "language": "de",
    }
    fields.update(overrides)
    return fields


# --- the builders' own checks ------------------------------------------------------------------
def test_released_body_uses_sample_gtins_and_lot_tracking() -> None:
    body = order_tea()
    assert body.lines[0].gtins == ["07310001234568"] and body.lines[0].lot_tracked
    assert order_acme().lines[1].gtins == [gtin14("MUG-TI-450")] == ["04006381333948"]


def test_fake_cloud_acks_once_per_event_id() -> None:
    broker = MemoryBroker()
    cloud = FakeCloud(broker)
    station_bus = broker.bus("st")
    acks: list[bytes] = []
    station_bus.subscribe(c.station_cmd_topic(STATION), lambda t, p: acks.append(p))
    env = c.new_envelope(c.ORDER_PACKED, site=SITE, station=STATION, seq=1, body={"order_id": "X"})
    station_bus.publish(c.station_events_topic(STATION), c.encode(env))
    station_bus.publish(c.station_events_topic(STATION), c.encode(env))
    statuses = [c.parse_body(c.decode(p), AckBody).status for p in acks]
    assert statuses == ["applied", "duplicate"] and len(cloud.store.applied) == 1
