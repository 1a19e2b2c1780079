"""The cloud process wiring: API + CloudLink (on an in-memory bus) + webhook worker, on both databases."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud.db import check_database_url, make_engine
from cloud.server import CloudProcess, load_folder, migrate
from sync import contract as c
from sync.memory import MemoryBroker
from sync.settings import Settings
from tests.support import SAMPLE_DATA


def test_release_reaches_the_site_feed_and_packed_is_acked(db_url: str, tmp_path: Path) -> None:
    migrate(db_url)
    creds = load_folder(db_url, SAMPLE_DATA)
    broker = MemoryBroker()
    station = broker.bus("station")
    feed: list[c.Envelope] = []
    acks: list[c.AckBody] = []
    got_feed = threading.Event()

    def on_feed(_topic: str, payload: bytes) -> None:
        feed.append(c.decode(payload))
        got_feed.set()

    station.subscribe(c.site_feed_topic("DE-LEJ"), on_feed)
    station.subscribe(c.station_cmd_topic("ST-1"), lambda _t, p: acks.append(c.parse_body(c.decode(p), c.AckBody)))
    engine = make_engine(db_url)
    process = CloudProcess(Settings(data_dir=tmp_path), engine=engine, bus=broker.bus("cloud")).start()
    try:
        order = next(o for o in json.loads((SAMPLE_DATA / "orders.json").read_text("utf-8"))
                     if o["external_id"] == "ACME-10001")
        auth = {"Authorization": f"Bearer {creds['acme-outdoor']['api_key']}"}
        created = TestClient(process.app).post("/v1/orders", json=order, headers=auth).json()
        assert got_feed.wait(5), "on_feed did not wake the feed publisher"
        assert feed[0].type == c.ORDER_RELEASED and feed[0].seq == 1
        released = c.parse_body(feed[0], c.OrderReleasedBody)
        packed = c.OrderPackedBody(
            order_id=released.order_id,
            lines=[c.PackedLine(sku=ln.sku, qty=ln.qty, gtin=ln.gtins[0]) for ln in released.lines],
            tracking_number=released.label.tracking_number,
            packed_at=c.utcnow(),
        )
        env = c.new_envelope(c.ORDER_PACKED, site="DE-LEJ", seq=1, body=packed, station="ST-1")
        station.publish(c.station_events_topic("ST-1"), c.encode(env))
        for _ in range(250):
            if acks:
                break
            threading.Event().wait(0.02)
        assert [a.status for a in acks] == ["applied"]
        status = TestClient(process.app).get(f"/v1/orders/{created['id']}", headers=auth).json()["status"]
        assert status == "shipped"
    finally:
        process.stop()
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("notaurl", "expected sqlite:///PATH or postgresql+psycopg://"),
        ("foo://bar", "runs on SQLite or PostgreSQL, not 'foo'"),
        ("mysql://u:pw@h/db", "not 'mysql'"),
        ("postgresql+psycopg2://u:pw@h/db", "use postgresql+psycopg://"),
        ("sqlite://", "needs a SQLite file"),
        ("sqlite:///:memory:", "needs a SQLite file"),
    ],
)
def test_bad_database_urls_are_refused_before_anything_is_made(url: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as e:
        check_database_url(url)
    assert ":pw@" not in str(e.value)
    with pytest.raises(ValueError, match=re.escape(reason)):
        make_engine(url)


def test_good_database_urls_pass_without_connecting(tmp_path: Path) -> None:
    assert check_database_url(f"sqlite:///{tmp_path / 'c.db'}").get_backend_name() == "sqlite"
    assert not (tmp_path / "c.db").exists()
    # the server need not be there: that is the first connection's to tell (exit 3, not 2)
    assert check_database_url("postgresql://u:pw@127.0.0.1:1/x").drivername == "postgresql+psycopg"
