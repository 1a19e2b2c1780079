"""The station replica: schema versions, the feed applied once and in order, one-transaction commits."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from station.errors import ReplicaError
from station.replica import SCHEMA_VERSION, Replica, ScanRecord, connect, migrate
from sync import contract as c
from sync.link import StationLink
from sync.memory import MemoryBroker
from sync.outbox import Outbox
from tests.test_station_helpers import (
    SITE,
    STATION,
    FakeCloud,
    cancel_env,
    order_acme,
    order_socks,
    order_tea,
    release_env,
    released_body,
)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(tmp_path / "replica.db", station=STATION, site=SITE, clock=lambda: 1000.0)
    yield r
    r.close()


def _scan(
    at: float = 1000.0, verdict: str = "item_ok", ok: bool = True, order_id: str | None = None
) -> ScanRecord:
    return ScanRecord(at=at, raw=b"x", text="x", verdict=verdict, ok=ok, message=verdict, order_id=order_id)


def _packed_body(order_id: str) -> c.OrderPackedBody:
    return c.OrderPackedBody(
        order_id=order_id,
        lines=[c.PackedLine(sku="SOCK-MW-42", qty=1, gtin="05901234123457")],
        tracking_number="1Z000000000000003",
        packed_at=datetime(2026, 6, 1, tzinfo=UTC),
    )


def test_new_replica_is_wal_full_sync_with_busy_timeout(replica: Replica, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "replica.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == replica.schema_version
    own = replica._conn  # the pragmas below are per connection
    assert own.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert own.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"feed_state", "orders", "order_lines", "scans", "outbox", "outbox_stream"} <= tables
    assert replica.last_feed_seq() == 0 and replica.outbox_depth() == 0


def test_a_v1_replica_upgrades_in_place_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    conn = connect(path)
    assert migrate(conn, target=1) == 1
    body = order_socks()
    # what a v1 build wrote: an order being packed, one unit counted, one unacked event
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO orders(order_id, external_id, tenant, status, service_level, ship_to, label, tracking_number, "
        "released, feed_seq, released_at, updated_at) VALUES (?, ?, ?, 'packing', 'standard', ?, ?, ?, '{}', 1, 1, 1)",
        (
            body.order_id,
            body.external_id,
            body.tenant,
            body.ship_to.model_dump_json(),
            body.label.model_dump_json(),
            body.label.tracking_number,
        ),
    )
    conn.execute(
        "INSERT INTO order_lines(order_id, line_no, sku, name, qty, gtins, lot_tracked, scanned) "
        "VALUES (?, 1, 'SOCK-MW-42', 'Socks', 2, '[\"05901234123457\"]', 0, 1)",
        (body.order_id,),
    )
    conn.execute("UPDATE feed_state SET last_feed_seq = 1")
    Outbox(station=STATION, site=SITE).append(
        conn, c.ORDER_PACKED, _packed_body("ORD-OLD"), tenant="acme-outdoor"
    )
    conn.execute("COMMIT")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(orders)")}
    assert "started_at" not in columns
    conn.close()

    replica = Replica(path, station=STATION, site=SITE)
    try:
        assert replica.schema_version == SCHEMA_VERSION == 3
        order = replica.packing_order()
        assert order is not None and order.order_id == body.order_id
        assert order.started_at is None and order.lines[0].scanned == 1 and order.lines[0].lots == ()
        assert replica.last_feed_seq() == 1 and replica.outbox_depth() == 1
        # the new column works
        assert replica.count_item(body.order_id, 1, lot="L7", scan=_scan())
        assert replica.get_order(body.order_id).lines[0].lots == ("L7",)  # type: ignore[union-attr]
    finally:
        replica.close()
    # opening again is a no-op
    Replica(path, station=STATION, site=SITE).close()


def test_a_replica_from_a_newer_build_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    Replica(path, station=STATION, site=SITE).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ReplicaError, match="newer than this build"):
        Replica(path, station=STATION, site=SITE)


def test_feed_applies_once_and_in_order(replica: Replica) -> None:
    replica.apply_feed(release_env(1, order_acme()))
    replica.apply_feed(release_env(1, order_acme()))  # a duplicate delivery: no effect
    with pytest.raises(ReplicaError, match="out of order"):
        replica.apply_feed(release_env(3, order_socks()))
    assert replica.get_order("ORD-3") is None and replica.last_feed_seq() == 1
    replica.apply_feed(release_env(2, order_tea()))
    replica.apply_feed(release_env(3, order_socks()))
    assert replica.last_feed_seq() == 3
    assert [o.order_id for o in replica.open_orders()] == ["ORD-1", "ORD-2", "ORD-3"]
    order = replica.get_order("ORD-1")
    assert order is not None and order.status == "released" and order.feed_seq == 1
    assert [(li.sku, li.qty, li.gtins, li.scanned) for li in order.lines] == [
        ("TENT-2P-GRN", 1, ("04006381333931",), 0),
        ("MUG-TI-450", 2, ("04006381333948",), 0),
    ]
    assert replica.get_order("ORD-2").lines[0].lot_tracked  # type: ignore[union-attr]
    assert order.label.zpl.startswith("^XA") and order.ship_to.city == "Berlin"


def test_a_release_seen_again_under_a_new_seq_keeps_packing_progress(replica: Replica) -> None:
    replica.apply_feed(release_env(1, order_socks()))
    replica.begin_packing("ORD-3", now=1.0)
    assert replica.count_item("ORD-3", 1, lot=None, scan=_scan())
    replica.apply_feed(release_env(2, order_socks()))
    order = replica.get_order("ORD-3")
    assert order is not None and order.status == "packing" and order.lines[0].scanned == 1
    assert replica.last_feed_seq() == 2


def test_cancel_rules(replica: Replica) -> None:
    for seq, body in enumerate((order_acme(), order_tea(), order_socks()), start=1):
        replica.apply_feed(release_env(seq, body))
    replica.begin_packing("ORD-2", now=1.0)
    replica.begin_packing("ORD-3", now=1.0)
    assert replica.count_item("ORD-3", 1, lot=None, scan=_scan())
    replica.commit_packed("ORD-3", _packed_body("ORD-3"), tenant="acme-outdoor", printed_at=2.0, now=2.0)

    replica.apply_feed(cancel_env(4, "ORD-1"))  # released -> cancelled
    replica.apply_feed(cancel_env(5, "ORD-2", reason="fraud"))  # packing -> cancelled
    replica.apply_feed(cancel_env(6, "ORD-3"))  # packed stays packed: the cloud raises the exception
    replica.apply_feed(cancel_env(7, "ORD-404"))  # unknown: nothing to do
    status = {o: replica.get_order(o).status for o in ("ORD-1", "ORD-2", "ORD-3")}  # type: ignore[union-attr]
    assert status == {"ORD-1": "cancelled", "ORD-2": "cancelled", "ORD-3": "packed"}
    assert replica.get_order("ORD-2").cancel_reason == "fraud"  # type: ignore[union-attr]
    assert replica.last_feed_seq() == 7
    assert replica.counts() == {"released": 0, "packing": 0, "packed": 1, "cancelled": 2}


def test_a_malformed_feed_entry_is_recorded_and_skipped_not_wedging_the_feed(replica: Replica) -> None:
    bad = c.new_envelope(c.ORDER_RELEASED, site=SITE, seq=1, body={"order_id": "X"})
    other_site = release_env(2, order_acme(), site="PL-POZ")
    unknown = c.new_envelope("order.teleported", site=SITE, seq=3, body={})
    for env in (bad, other_site, unknown):
        replica.apply_feed(env)
    replica.apply_feed(release_env(4, order_socks()))
    assert replica.last_feed_seq() == 4
    assert [(r.seq, r.type) for r in replica.feed_rejects()] == [
        (1, "order.released"),
        (2, "order.released"),
        (3, "order.teleported"),
    ]
    assert "body invalid" in replica.feed_rejects()[0].reason
    assert [o.order_id for o in replica.open_orders()] == ["ORD-3"]


def test_find_orders_by_order_id_external_id_or_tracking(replica: Replica) -> None:
    replica.apply_feed(release_env(1, order_acme()))
    twin = released_body(
        "ORD-9", "ACME-10001", {"TEA-EG-100": 1}, tenant="nordic-tea", tracking="1Z000000000000009"
    )
    replica.apply_feed(release_env(2, twin))  # external ids are unique per tenant only
    assert replica.find_order("ORD-1").order_id == "ORD-1"  # type: ignore[union-attr]
    assert replica.find_order(" 1Z000000000000009 ").order_id == "ORD-9"  # type: ignore[union-attr]
    assert [o.order_id for o in replica.find_orders("ACME-10001")] == ["ORD-1", "ORD-9"]
    assert replica.find_order("ACME-10001") is None  # ambiguous
    assert replica.find_orders("nope") == [] and replica.find_orders("  ") == []


def test_commit_packed_is_one_transaction(replica: Replica) -> None:
    replica.apply_feed(release_env(1, order_socks()))
    with pytest.raises(ReplicaError, match="released, not being packed"):
        replica.commit_packed("ORD-3", _packed_body("ORD-3"), tenant="acme-outdoor", printed_at=1, now=1)
    assert replica.outbox_depth() == 0
    replica.begin_packing("ORD-3", now=1.0)
    assert replica.count_item("ORD-3", 1, lot=None, scan=_scan())
    # make the outbox insert fail inside the transaction: the status change must roll back with it
    with replica._tx() as conn:
        conn.execute("INSERT INTO outbox(seq, id, type, payload, created_at) VALUES (1, 'x', 't', x'00', 0)")
    with pytest.raises(sqlite3.IntegrityError):
        replica.commit_packed("ORD-3", _packed_body("ORD-3"), tenant="acme-outdoor", printed_at=2, now=2)
    assert replica.get_order("ORD-3").status == "packing"  # type: ignore[union-attr]
    assert replica.outbox_depth() == 1
    replica.outbox_trim("x")  # type: ignore[arg-type]
    commit = replica.commit_packed("ORD-3", _packed_body("ORD-3"), tenant="acme-outdoor", printed_at=2, now=3)
    order = replica.get_order("ORD-3")
    assert order is not None and order.status == "packed" and order.packed_event_id == str(commit.envelope.id)
    [row] = replica.outbox_due(0, 10)
    assert row.id == commit.envelope.id and json.loads(row.payload)["body"]["order_id"] == "ORD-3"
    assert not commit.was_cancelled


def test_count_item_never_exceeds_qty_and_records_the_scan(replica: Replica) -> None:
    replica.apply_feed(release_env(1, order_socks()))
    assert not replica.count_item("ORD-3", 1, lot=None, scan=_scan())  # not being packed yet
    replica.begin_packing("ORD-3", now=1.0)
    assert replica.count_item("ORD-3", 1, lot=None, scan=_scan(order_id="ORD-3"))
    assert not replica.count_item("ORD-3", 1, lot=None, scan=_scan(order_id="ORD-3"))
    assert len(replica.scans(order_id="ORD-3")) == 1  # nothing recorded for the refused count


def test_concurrent_threads_share_the_replica_safely(replica: Replica) -> None:
    replica.apply_feed(release_env(1, order_socks()))
    errors: list[BaseException] = []

    def scans() -> None:
        try:
            for i in range(100):
                replica.record_scan(_scan(at=float(i), verdict="wrong_item", ok=False))
                replica.counts()
        except BaseException as e:  # pragma: no cover - what this test looks for
            errors.append(e)

    def feed() -> None:
        try:
            for seq in range(2, 102):
                replica.apply_feed(cancel_env(seq, "ORD-404"))
                replica.outbox_depth()
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=scans) for _ in range(3)] + [threading.Thread(target=feed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(replica.scans()) == 300 and replica.last_feed_seq() == 101


def test_replica_is_the_station_store_of_the_link(replica: Replica) -> None:
    """Releases published while the station was away arrive by replay on connect, in order, once."""
    broker = MemoryBroker()
    cloud = FakeCloud(broker)
    for body in (order_acme(), order_tea()):
        cloud.release(body)  # nobody listening yet
    bus = broker.bus(STATION)
    link = StationLink(station=STATION, site=SITE, bus=bus, store=replica)
    link.start()  # hello -> the cloud replays the feed
    assert replica.last_feed_seq() == 2 and link.stats.feed_applied == 2
    cloud.release(order_socks())  # live
    cloud.link.replay(STATION, SITE, 0)  # everything again: duplicates only
    assert replica.last_feed_seq() == 3 and link.stats.feed_duplicates == 3
    assert [o.order_id for o in replica.open_orders()] == ["ORD-1", "ORD-2", "ORD-3"]


def test_a_feed_skip_advances_the_sequence_and_changes_nothing(replica: Replica) -> None:
    replica.apply_feed(release_env(1, order_acme()))
    skip = c.FeedSkipBody(order_id="ORD-OLD", replaces=c.ORDER_RELEASED, reason="order is shipped")
    replica.apply_feed(c.new_envelope(c.FEED_SKIP, site="DE-LEJ", seq=2, body=skip))
    replica.apply_feed(release_env(3, order_tea()))
    assert replica.last_feed_seq() == 3
    assert [o.order_id for o in replica.open_orders()] == ["ORD-1", "ORD-2"]
    assert replica.get_order("ORD-OLD") is None and replica.feed_rejects() == []


def test_a_replica_knows_its_site_and_a_move_to_another_site_starts_from_seq_0(tmp_path: Path) -> None:
    """Re-enrolling a station for another site must not keep the old site's feed position: the new
    site's entries 1..N would be dropped as duplicates and those releases never reach the bench."""
    path = tmp_path / "replica.db"
    first = Replica(path, station=STATION, site=SITE)
    for seq in range(1, 4):
        first.apply_feed(release_env(seq, order_socks() if seq == 1 else order_tea().model_copy(
            update={"order_id": f"ORD-T{seq}"})))
    assert first.last_feed_seq() == 3
    first.close()

    again = Replica(path, station=STATION, site=SITE)  # same identity: same replica
    assert again.last_feed_seq() == 3
    again.close()

    moved = Replica(path, station=STATION, site="PL-POZ")
    try:
        assert moved.last_feed_seq() == 0 and moved.open_orders() == []
        moved.apply_feed(release_env(1, order_acme(), site="PL-POZ"))  # the new site's first entry applies
        assert moved.last_feed_seq() == 1
    finally:
        moved.close()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("replica.before-")]
    assert len(kept) == 1  # the old site's replica is kept, not deleted
    old = sqlite3.connect(kept[0])
    assert old.execute("SELECT last_feed_seq FROM feed_state").fetchone()[0] == 3


def test_a_replica_with_unacked_events_is_never_thrown_away_for_another_site(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    r = Replica(path, station=STATION, site=SITE)
    with r._tx() as conn:
        Outbox(station=STATION, site=SITE).append(conn, c.ORDER_PACKED, _packed_body("ORD-X"), tenant="acme-outdoor")
    r.close()
    with pytest.raises(ReplicaError, match=r"1 of its events are not acked"):
        Replica(path, station=STATION, site="PL-POZ")
    back = Replica(path, station=STATION, site=SITE)
    try:
        assert back.outbox_depth() == 1  # nothing was lost
    finally:
        back.close()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("replica.before-")] == []
