"""End to end over a real MQTT broker on TCP: the demo's whole flow, and a station that packs while
its broker connection is down. Real HTTP (uvicorn), real pty scanner framing, real TCP printing,
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cloud.models import InboxRow
from cloud.server import CloudServer
from packline.demo import DemoOptions, run_demo
from packline.wiring import DemoStation
from sync import contract as c
from sync.broker import free_port
from sync.settings import Settings, parse_mqtt_url
from tests.support import SAMPLE_DATA, TcpProxy
from tests.zpl_render import decode_barcodes, render_many

pytestmark = pytest.mark.slow


def wait_until(pred: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    assert pred(), f"timed out waiting for {what}"


@pytest.mark.node
def test_demo_ships_every_sample_order_and_every_label_decodes(
    db_url: str, mqtt_broker: tuple[str, int], tmp_path: Path
) -> None:
    url, protocol = mqtt_broker
    out = tmp_path / "out"
    result = run_demo(DemoOptions(settings=Settings(data_dir=tmp_path / "data"), out=out, mqtt_url=url,
                                  mqtt_protocol=protocol, database_url=db_url))
    assert result.problems == []
    assert result.ok
    samples = json.loads((SAMPLE_DATA / "orders.json").read_text("utf-8"))
    assert [o.external_id for o in result.orders] == [o["external_id"] for o in samples]
    assert {o.status for o in result.orders} == {"shipped"}
    assert all(o.reason is None for o in result.orders)
    # one order.released and one order.shipped per order, each verified by the receiver
    assert result.stats["webhooks"] == {"verified": 24, "by_type": {"order.released": 12, "order.shipped": 12},
                                        "failed": 0}
    # customs destinations got their customs data on the label
    by_id = {o.external_id: o for o in result.orders}
    for ext in ("ACME-10005", "ACME-10006", "NT-5004"):  # CH, GB, NO
        assert "CN 22" in (out / f"{ext}.zpl").read_text("utf-8")
    assert "CN 22" not in (out / "ACME-10001.zpl").read_text("utf-8")  # DE: inside the EU customs union
    # the label files: exactly one label each, decoded by a renderer and decoder we did not write
    files = [out / str(o.label_file) for o in result.orders]
    zpls = [f.read_text("utf-8") for f in files]
    for f, zpl in zip(files, zpls, strict=True):
        assert zpl.count("^XA") == 1 and zpl.count("^XZ") == 1, f
        assert "^CI28" in zpl, f
    pngs = render_many(zpls)
    for o, images in zip(result.orders, pngs, strict=True):
        assert len(images) == 1, f"{o.external_id}: {len(images)} labels in one file"
        codes = [text for fmt, text in decode_barcodes(images[0]) if "128" in fmt]
        assert codes == [by_id[o.external_id].tracking_number], o.external_id
    assert "Γιώργος Παπαδόπουλος".encode() in (out / "ACME-10007.zpl").read_bytes()


class World:
    def __init__(self, cloud: CloudServer, station: DemoStation, proxy: TcpProxy, creds: dict[str, Any]):
        self.cloud = cloud
        self.station = station
        self.proxy = proxy
        self.creds = creds
        self.http = httpx.Client(base_url=cloud.api_url, timeout=30)

    def auth(self, tenant: str = "acme-outdoor") -> dict[str, str]:
        return {"authorization": f"Bearer {self.creds[tenant]['api_key']}"}

    def create(self, external_id: str) -> dict[str, Any]:
        o = next(o for o in json.loads((SAMPLE_DATA / "orders.json").read_text("utf-8"))
                 if o["external_id"] == external_id)
        r = self.http.post("/v1/orders", json=o, headers=self.auth(o["tenant"]))
        assert r.status_code == 201, r.text
        return dict(r.json())

    def order(self, order_id: str, tenant: str = "acme-outdoor") -> dict[str, Any]:
        return dict(self.http.get(f"/v1/orders/{order_id}", headers=self.auth(tenant)).json())

    def stock(self, sku: str, site: str, tenant: str = "acme-outdoor") -> dict[str, int]:
        items = self.http.get("/v1/inventory", params={"sku": sku, "site": site}, headers=self.auth(tenant)).json()
        return {k: items["items"][0][k] for k in ("on_hand", "reserved")}

    def count(self, sql: str, **params: Any) -> int:
        with self.cloud.engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())


@pytest.fixture
def world(db_url: str, mqtt_broker: tuple[str, int], tmp_path: Path) -> Iterator[World]:
    url, protocol = mqtt_broker
    broker = parse_mqtt_url(url)
    proxy = TcpProxy(broker.host, broker.port)
    settings = Settings(data_dir=tmp_path / "data", cloud_group=f"e2e-{uuid.uuid4().hex[:8]}")
    cloud = CloudServer(settings, database_url=db_url, mqtt_url=url, protocol=protocol, port=free_port())
    cloud.start()
    creds = cloud.load_dir(SAMPLE_DATA)
    station = DemoStation(data_dir=tmp_path / "data", site="PL-POZ", station_id=f"ST-E2E-{free_port()}",
                          mqtt_url=proxy.url, protocol=protocol, cloud_url=cloud.api_url, auto_pack=False)
    station.start()
    assert station.wait_online(15)
    w = World(cloud, station, proxy, creds)
    # webhooks are recorded per message (delivery to this closed port keeps failing: that is fine here)
    w.http.put("/v1/webhook", json={"url": f"http://127.0.0.1:{free_port()}/hooks"}, headers=w.auth()).raise_for_status()
    try:
        yield w
    finally:
        w.http.close()
        station.stop()
        cloud.stop()
        proxy.close()


def test_order_packed_while_the_broker_connection_is_down_ships_exactly_once(world: World) -> None:
    rt = world.station.runtime
    packer = world.station.packer
    assert rt is not None and packer is not None
    before = world.stock("SOCK-MW-42", "PL-POZ")
    first = world.create("ACME-10002")  # Warsaw, 3 socks -> PL-POZ
    assert first["site"] == "PL-POZ"
    wait_until(lambda: rt.replica.get_order(first["id"]) is not None, what="release reaches the station")

    world.proxy.cut()  # the network between station and broker goes down
    wait_until(lambda: not rt.link.bus.connected, what="station notices the outage")
    second = world.create("ACME-10007")  # released while the station is away: Athens, 2 socks
    packer.pack(rt.replica.get_order(first["id"]))  # type: ignore[arg-type]
    assert rt.replica.get_order(first["id"]).status == "packed"  # type: ignore[union-attr]
    assert rt.status().outbox_depth == 1
    time.sleep(1.0)
    assert world.order(first["id"])["status"] == "released"  # the cloud cannot know yet
    assert world.station.zebra is not None and len(world.station.zebra.jobs) == 1  # the label printed offline

    world.proxy.restore()
    wait_until(lambda: world.order(first["id"])["status"] == "shipped", what="first order shipped after reconnect")
    wait_until(lambda: rt.status().outbox_depth == 0, what="outbox trimmed after the ack")
    # the release published during the outage is replayed on reconnect, then packed and shipped too
    if second["site"] == "PL-POZ":
        wait_until(lambda: rt.replica.get_order(second["id"]) is not None, what="missed release replayed")
        packer.pack(rt.replica.get_order(second["id"]))  # type: ignore[arg-type]
        wait_until(lambda: world.order(second["id"])["status"] == "shipped", what="second order shipped")

    # exactly once: one inbox row, one post movement per line, one order.shipped webhook, stock down once
    event_id = rt.replica.get_order(first["id"]).packed_event_id  # type: ignore[union-attr]
    with world.cloud.engine.connect() as conn:
        inbox = conn.execute(sa.select(InboxRow.status).where(InboxRow.event_id == uuid.UUID(str(event_id)))).all()
    assert [r[0] for r in inbox] == ["applied"]
    assert world.count("SELECT COUNT(*) FROM movements WHERE order_id = :o AND kind = 'post'", o=first["id"]) == 1
    assert world.count("SELECT COUNT(*) FROM webhook_deliveries WHERE event_type = 'order.shipped' "
                       "AND payload LIKE :p", p=f"%{first['id']}%") == 1
    after = world.stock("SOCK-MW-42", "PL-POZ")
    shipped_here = 3 + (2 if second["site"] == "PL-POZ" else 0)
    assert after == {"on_hand": before["on_hand"] - shipped_here, "reserved": 0}

    # a second delivery of the same event id (a resend whose ack was lost) changes nothing
    order = rt.replica.get_order(first["id"])
    assert order is not None
    body = c.OrderPackedBody(order_id=first["id"], tracking_number=order.tracking_number, packed_at=c.utcnow(),
                             lines=[c.PackedLine(sku=li.sku, qty=li.qty, gtin=li.gtins[0]) for li in order.lines])
    again = c.new_envelope(c.ORDER_PACKED, site="PL-POZ", station=rt.config.station_id, seq=1, body=body,
                           tenant="acme-outdoor", id_=uuid.UUID(str(event_id)))
    world.cloud.process.link.handle(c.station_events_topic(rt.config.station_id), c.encode(again))
    assert world.cloud.process.link.stats.feed_duplicates >= 1
    assert world.count("SELECT COUNT(*) FROM movements WHERE order_id = :o AND kind = 'post'", o=first["id"]) == 1
    assert world.stock("SOCK-MW-42", "PL-POZ") == after


def test_demo_runs_on_the_embedded_mqtt_311_broker(tmp_path: Path) -> None:
    """Where no Mosquitto exists (a laptop), the demo's broker is amqtt: MQTT 3.1.1 only."""
    from sync.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        result = run_demo(DemoOptions(settings=Settings(data_dir=tmp_path / "data"), out=tmp_path / "out",
                                      mqtt_url=broker.url, mqtt_protocol=311))
    assert result.problems == [] and result.ok
    assert result.stats["broker"]["protocol"] == "3.1.1"
    assert {o.status for o in result.orders} == {"shipped"}
