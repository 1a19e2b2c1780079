"""SqlCloudStore: station events applied once, conflicts recorded, feed and presence, on both databases."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from cloud import ledger
from cloud.api import create_app
from cloud.db import make_engine, read_session, upgrade
from cloud.ingest import SqlCloudStore
from cloud.loader import load_dir
from sync import contract as c
from sync.link import CloudLink, CloudStore
from sync.memory import MemoryBroker
from sync.settings import Settings
from tests.support import SAMPLE_DATA

ORDERS: list[dict[str, Any]] = json.loads((SAMPLE_DATA / "orders.json").read_text("utf-8"))


@dataclass
class World:
    engine: Engine
    client: TestClient
    keys: dict[str, dict[str, Any]]
    store: SqlCloudStore

    def release(self, external_id: str) -> dict[str, Any]:
        o = next(o for o in ORDERS if o["external_id"] == external_id)
        r = self.client.post("/v1/orders", json=o, headers=self.auth(o["tenant"]))
        assert r.status_code == 201 and r.json()["status"] == "released", r.text
        return dict(r.json())

    def auth(self, tenant: str = "acme-outdoor") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]['api_key']}"}

    def levels(self, tenant: str = "acme-outdoor") -> dict[tuple[str, str], tuple[int, int]]:
        with read_session(self.engine) as s:
            return {(lv.sku, lv.site): (lv.on_hand, lv.reserved) for lv in ledger.stock_levels(s, tenant)}

    def invariants(self) -> list[str]:
        with read_session(self.engine) as s:
            return ledger.check_invariants(s)

    def order(self, oid: str, tenant: str = "acme-outdoor") -> dict[str, Any]:
        return dict(self.client.get(f"/v1/orders/{oid}", headers=self.auth(tenant)).json())


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    engine = make_engine(db_url)
    upgrade(engine)
    keys = load_dir(engine, SAMPLE_DATA)
    app = create_app(Settings(data_dir=tmp_path), engine=engine)
    yield World(engine, TestClient(app), keys, SqlCloudStore(engine))
    engine.dispose()


def _conforms(store: SqlCloudStore) -> CloudStore:
    """Type-checked: SqlCloudStore implements sync's CloudStore protocol exactly."""
    return store


def packed_env(order: dict[str, Any], *, station: str = "ST-DE-LEJ-1", lines: list[c.PackedLine] | None = None,
               tracking: str | None = None) -> c.Envelope:
    body = c.OrderPackedBody(
        order_id=order["id"],
        packer="PK-1001",
        lines=lines or [c.PackedLine(sku=ln["sku"], qty=ln["qty"], gtin="00000000000000") for ln in order["lines"]],
        tracking_number=tracking or order["shipment"]["tracking_number"],
        weight_g=2300,
        packed_at=c.utcnow(),
    )
    return c.new_envelope(c.ORDER_PACKED, site=order["site"], seq=1, body=body, tenant=order["tenant"],
                          station=station)


def test_packed_ships_the_order_once(world: World) -> None:
    o = world.release("ACME-10001")
    assert world.levels()[("TENT-2P-GRN", "DE-LEJ")] == (40, 1)
    env = packed_env(o)
    first = world.store.apply_station_event(env)
    assert (first.event_id, first.status) == (env.id, "applied")
    after = world.levels()
    assert after[("TENT-2P-GRN", "DE-LEJ")] == (39, 0) and after[("MUG-TI-450", "DE-LEJ")] == (198, 0)
    second = world.store.apply_station_event(env)  # the station resends: at-least-once
    assert second.status == "duplicate"
    assert world.levels() == after
    shipped = world.order(o["id"])
    assert shipped["status"] == "shipped" and shipped["shipped_at"]
    assert world.invariants() == []


def test_packed_after_cancel_becomes_an_exception(world: World) -> None:
    o = world.release("ACME-10001")
    assert world.client.post(f"/v1/orders/{o['id']}/cancel", headers=world.auth()).status_code == 200
    ack = world.store.apply_station_event(packed_env(o))
    assert ack.status == "rejected" and "cancelled" in (ack.reason or "")
    got = world.order(o["id"])
    assert got["status"] == "exception" and "cancelled" in got["reason"]
    assert world.levels()[("TENT-2P-GRN", "DE-LEJ")] == (40, 0)  # nothing shipped in the ledger
    with read_session(world.engine) as s:
        row = s.connection().execute(sa.text("SELECT status, reason FROM inbox")).one()
    assert row.status == "rejected" and "cancelled" in row.reason
    assert world.invariants() == []


def test_mismatched_packing_is_an_exception_not_a_shipment(world: World) -> None:
    o = world.release("ACME-10001")
    wrong = [c.PackedLine(sku="TENT-2P-GRN", qty=1, gtin="04006381333931")]  # the mugs are missing
    ack = world.store.apply_station_event(packed_env(o, lines=wrong))
    assert ack.status == "rejected"
    assert world.order(o["id"])["status"] == "exception"
    assert world.levels()[("TENT-2P-GRN", "DE-LEJ")] == (40, 1)  # still reserved for a manager to resolve
    o2 = world.release("ACME-10004")
    ack = world.store.apply_station_event(packed_env(o2, station="ST-NL-1", tracking="PL000000000DE"))
    assert ack.status == "rejected" and "tracking number" in (ack.reason or "")


def test_unknown_events_and_orders_are_rejected_and_recorded(world: World) -> None:
    odd = c.new_envelope("stock.teleported", site="DE-LEJ", seq=3, body={}, station="ST-DE-LEJ-1")
    ack = world.store.apply_station_event(odd)
    assert ack.status == "rejected" and "unknown event type" in (ack.reason or "")
    assert world.store.apply_station_event(odd).status == "duplicate"
    ghost = packed_env({"id": "ord_missing", "site": "DE-LEJ", "tenant": "acme-outdoor",
                        "lines": [{"sku": "X", "qty": 1}], "shipment": {"tracking_number": "T"}})
    assert world.store.apply_station_event(ghost).status == "rejected"
    bad_body = c.new_envelope(c.ORDER_PACKED, site="DE-LEJ", seq=4, body={"order_id": 5}, station="ST-DE-LEJ-1")
    assert world.store.apply_station_event(bad_body).status == "rejected"
    with read_session(world.engine) as s:
        assert s.connection().execute(sa.text("SELECT count(*) FROM inbox WHERE status = 'rejected'")).scalar() == 3


def test_two_workers_racing_on_one_event_apply_it_once(world: World) -> None:
    o = world.release("ACME-10002")
    env = packed_env(o, station="ST-PL-POZ-1")
    n = 6
    barrier = threading.Barrier(n)
    acks: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        store = SqlCloudStore(world.engine)  # each worker its own store and sessions
        barrier.wait(timeout=30)
        ack = store.apply_station_event(env)
        with lock:
            acks.append(ack.status)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(acks) == ["applied"] + ["duplicate"] * (n - 1)
    assert world.levels()[("SOCK-MW-42", "PL-POZ")] == (497, 0)
    assert world.invariants() == []


def test_feed_replay_publish_marks_dead_letters_and_presence(world: World) -> None:
    world.release("ACME-10001")
    world.release("ACME-10003")
    entries = world.store.unpublished_feed(10)
    assert [(e.site, e.seq) for e in entries] == [("DE-LEJ", 1), ("DE-LEJ", 2)]
    assert [e.seq for e in world.store.feed_since("DE-LEJ", 1, 10)] == [2]
    assert world.store.feed_since("PL-POZ", 0, 10) == []
    world.store.mark_feed_published(entries[:1])
    assert [e.seq for e in world.store.unpublished_feed(10)] == [2]
    assert c.decode(entries[0].payload).seq == 1  # the stored bytes are the wire envelope

    world.store.record_dead_letter("packline/v1/stations/X/events", b"\xff", "not JSON")
    world.store.record_presence("ST-DE-LEJ-1", "DE-LEJ", {"online": True, "outbox_depth": 4, "last_feed_seq": 2})
    world.store.record_presence("ST-DE-LEJ-1", "DE-LEJ", {"online": False, "outbox_depth": 0, "last_feed_seq": 2})
    with read_session(world.engine) as s:
        conn = s.connection()
        assert conn.execute(sa.text("SELECT reason FROM dead_letters")).scalar_one() == "not JSON"
        row = conn.execute(sa.text("SELECT online, outbox_depth, last_feed_seq FROM station_presence")).one()
    assert (bool(row.online), row.outbox_depth, row.last_feed_seq) == (False, 0, 2)


def test_cloud_link_acks_through_a_bus(world: World) -> None:
    """The store plugged into sync's CloudLink: a station's packed event is applied and acked once."""
    o = world.release("ACME-10001")
    broker = MemoryBroker()
    cloud_bus, station_bus = broker.bus("cloud"), broker.bus("station")
    link = CloudLink(bus=cloud_bus, store=_conforms(world.store))
    acks: list[c.AckBody] = []
    station_bus.subscribe(c.station_cmd_topic("ST-DE-LEJ-1"),
                          lambda _t, p: acks.append(c.parse_body(c.decode(p), c.AckBody)))
    env = packed_env(o)
    for _ in range(2):
        link.handle(c.station_events_topic("ST-DE-LEJ-1"), c.encode(env))
    assert [a.status for a in acks] == ["applied", "duplicate"]
    # the release, then the order.updated(shipped) that closes it for other stations, go out on the feed
    assert link.publish_feed() == 2
    assert world.store.unpublished_feed(10) == []
    link.handle(c.station_events_topic("ST-DE-LEJ-1"), b"{broken")
    with read_session(world.engine) as s:
        assert s.connection().execute(sa.text("SELECT count(*) FROM dead_letters")).scalar() == 1


def test_unknown_event_id_is_not_confused_with_another(world: World) -> None:
    o = world.release("ACME-10001")
    env = packed_env(o)
    other = env.model_copy(update={"id": uuid.uuid4()})
    assert world.store.apply_station_event(env).status == "applied"
    before = world.levels()
    ack = world.store.apply_station_event(other)  # a second, different event for a shipped order
    assert ack.status == "rejected" and "packed twice" in (ack.reason or "")
    # two parcels exist for one order: that is an exception a manager resolves, not a silent reject
    shown = world.order(o["id"])
    assert shown["status"] == "exception" and "packed twice" in shown["reason"]
    assert world.levels() == before  # the ledger posted once; the manager books what really left


def test_replay_compacts_orders_that_closed_meanwhile(world: World) -> None:
    """A station that was away (or is new) must not pack yesterday's shipped or cancelled orders:
    on replay their entries arrive as feed.skip with the same seq, so the sequence stays gap-free."""
    shipped = world.release("ACME-10001")  # DE-LEJ
    cancelled = world.release("ACME-10005")  # DE-LEJ
    still_open = world.release("ACME-10006")  # DE-LEJ
    assert world.store.apply_station_event(packed_env(shipped)).status == "applied"
    assert world.client.post(f"/v1/orders/{cancelled['id']}/cancel", headers=world.auth()).status_code == 200
    late_cancel = world.release("ACME-10003")  # DE-LEJ: the station has this release ...
    before_cancel = max(e.seq for e in world.store.feed_since("DE-LEJ", 0, 100))
    assert world.client.post(f"/v1/orders/{late_cancel['id']}/cancel", headers=world.auth()).status_code == 200

    replay = [c.decode(e.payload) for e in world.store.feed_since("DE-LEJ", 0, 100)]
    assert [e.seq for e in replay] == list(range(1, len(replay) + 1))  # gap-free
    kinds = [(e.type, e.body.get("order_id"), e.body.get("replaces")) for e in replay]
    assert kinds == [
        (c.FEED_SKIP, shipped["id"], c.ORDER_RELEASED),
        (c.FEED_SKIP, cancelled["id"], c.ORDER_RELEASED),
        (c.ORDER_RELEASED, still_open["id"], None),
        (c.FEED_SKIP, shipped["id"], c.ORDER_UPDATED),  # "shipped by ST-DE-LEJ-1": news only to holders
        (c.FEED_SKIP, cancelled["id"], c.ORDER_CANCELLED),
        (c.FEED_SKIP, late_cancel["id"], c.ORDER_RELEASED),
        (c.FEED_SKIP, late_cancel["id"], c.ORDER_CANCELLED),
    ]
    # ... but a station that already applied the release gets the cancel itself
    tail = [c.decode(e.payload) for e in world.store.feed_since("DE-LEJ", before_cancel, 100)]
    assert [(e.type, e.body["order_id"]) for e in tail] == [(c.ORDER_CANCELLED, late_cancel["id"])]
