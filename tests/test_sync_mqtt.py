"""The sync contract over a real broker on TCP (paho-mqtt 2.x), MQTT 5 and 3.1.1."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from sync import contract as c
from sync.broker import EmbeddedBroker
from sync.link import CloudLink, StationLink
from sync.mqtt import PahoBus
from sync.settings import parse_mqtt_url
from tests.test_sync_link import FakeCloudStore, SqliteStationStore


def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def make_pair(url: str, protocol: int, tmp_path: Path, station: str | None = None):
    station = station or f"ST-{uuid.uuid4().hex[:6]}"
    store = SqliteStationStore(tmp_path / f"{station}.db")
    store.outbox.station = station
    cloud_store = FakeCloudStore()
    will = (c.station_state_topic(station), b"")
    sbus = PahoBus(parse_mqtt_url(url), station, protocol=protocol, will=will)
    cbus = PahoBus(parse_mqtt_url(url), f"cloud-{uuid.uuid4().hex[:6]}", protocol=protocol)
    link = StationLink(station=station, site="DE-LEJ", bus=sbus, store=store, resend_after_s=1)
    cloud = CloudLink(bus=cbus, store=cloud_store)
    return store, cloud_store, sbus, cbus, link, cloud


@pytest.mark.parametrize("protocol", [5, 311])
def test_roundtrip_over_the_suite_broker(mqtt_broker: tuple[str, int], protocol: int, tmp_path: Path) -> None:
    url, broker_protocol = mqtt_broker
    if broker_protocol == 311 and protocol == 5:
        pytest.skip("the embedded broker speaks MQTT 3.1.1 only")
    store, cloud_store, sbus, cbus, link, cloud = make_pair(url, protocol, tmp_path)
    try:
        cloud.start()
        cbus.start(wait_s=10)
        link.start()
        sbus.start(wait_s=10)
        envs = [store.pack(f"ord_{i}") for i in range(20)]
        link.pump()
        assert wait_until(lambda: store.outbox_depth() == 0)
        assert set(cloud_store.applied) == {e.id for e in envs}
        cloud_store.add_release("DE-LEJ", "ord_r1")
        cloud.notify_feed()
        assert wait_until(lambda: store.applied() == [1])
    finally:
        sbus.stop()
        cbus.stop()
        cloud.stop()


def test_embedded_broker_carries_the_contract(tmp_path: Path) -> None:
    with EmbeddedBroker() as broker:
        store, cloud_store, sbus, cbus, link, cloud = make_pair(broker.url, 311, tmp_path)
        try:
            cloud.start()
            cbus.start(wait_s=10)
            link.start()
            sbus.start(wait_s=10)
            env = store.pack("ord_1")
            link.pump()
            assert wait_until(lambda: store.outbox_depth() == 0)
            assert cloud_store.applied == {env.id: 1}
        finally:
            sbus.stop()
            cbus.stop()
            cloud.stop()


def test_broker_restart_loses_nothing_and_doubles_nothing(private_mosquitto, tmp_path: Path) -> None:
    broker = private_mosquitto
    store, cloud_store, sbus, cbus, link, cloud = make_pair(broker.url, 5, tmp_path)
    try:
        cloud.start()
        cbus.start(wait_s=10)
        link.start()
        sbus.start(wait_s=10)
        first = store.pack("before")
        link.pump()
        assert wait_until(lambda: store.outbox_depth() == 0)
        broker.kill()  # hard crash
        assert wait_until(lambda: not sbus.connected)
        during = [store.pack(f"during_{i}") for i in range(10)]
        assert link.pump() == 0  # offline: kept in the outbox, not in paho's memory
        assert store.outbox_depth() == 10
        broker.start()
        assert wait_until(lambda: store.outbox_depth() == 0, 20)
        assert set(cloud_store.applied) == {first.id, *(e.id for e in during)}
        assert all(n == 1 for n in cloud_store.applied.values())
    finally:
        sbus.stop()
        cbus.stop()
        cloud.stop()


def test_paho_bus_refuses_when_offline_and_sets_nodelay(private_mosquitto) -> None:
    import socket

    bus = PahoBus(parse_mqtt_url(private_mosquitto.url), "nodelay-check", protocol=5).start(wait_s=10)
    try:
        sock = bus.client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        private_mosquitto.stop()
        assert wait_until(lambda: not bus.connected)
        assert bus.publish("packline/v1/x", b"1") is False
    finally:
        bus.stop(graceful=False)


def test_bad_mqtt_urls_are_clear() -> None:
    for bad, msg in (("http://x", "mqtt://"), ("mqtt://", "no host"), ("mqtt://h:99999", "bad port")):
        with pytest.raises(ValueError, match=msg):
            parse_mqtt_url(bad)
    u = parse_mqtt_url("mqtts://st%401:p%3Ass@broker.example:8883")
    assert (u.username, u.password, u.tls, u.port) == ("st@1", "p:ss", True, 8883)
    assert "p:ss" not in str(u)


def test_paho_bus_names_a_broker_that_never_sends_connack() -> None:
    import socket

    with socket.socket() as mute:  # accepts TCP (the kernel does), never speaks MQTT
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        bus = PahoBus(parse_mqtt_url(f"mqtt://127.0.0.1:{mute.getsockname()[1]}"), "mute-check", protocol=5)
        try:
            with pytest.raises(ConnectionError, match=r"no CONNACK within 1.5 s: is this an MQTT broker\?"):
                bus.start(wait_s=1.5)
        finally:
            bus.stop(graceful=False)
