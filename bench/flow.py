"""Benchmark: the whole order flow against raw baselines measured in the same run.

    .venv/bin/python bench/flow.py [--orders 500] [--database-url URL] [--mqtt URL]

Prints, for the same machine, broker and database:

* raw MQTT: QoS 1 publish -> receive through the broker (paho, TCP_NODELAY), messages/s;
* raw DB: single-row INSERT + COMMIT transactions per second (one writer), the floor every
  ledger write pays;
* the flow: ``packline demo --orders N`` (API -> route/reserve/label -> MQTT feed -> station scans
  over a pty -> Zebra over TCP -> packed event -> ledger post -> webhook), orders/s and
  p50/p99 order -> shipped;

and the ratios flow / raw. No thresholds: this reports, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from packline.demo import DemoOptions, run_demo
from sync.broker import start_default_broker
from sync.mqtt import PahoBus
from sync.settings import Settings, parse_mqtt_url


def raw_mqtt(url: str, protocol: int, n: int = 5000) -> float:
    sub = PahoBus(parse_mqtt_url(url), f"bench-sub-{uuid.uuid4().hex[:6]}", protocol=protocol,
                  persistent=False).start(wait_s=10)
    pub = PahoBus(parse_mqtt_url(url), f"bench-pub-{uuid.uuid4().hex[:6]}", protocol=protocol,
                  persistent=False).start(wait_s=10)
    topic = f"bench/{uuid.uuid4().hex}"
    done = threading.Event()
    got = [0]

    def on_msg(_t: str, _p: bytes) -> None:
        got[0] += 1
        if got[0] >= n:
            done.set()

    sub.subscribe(topic, on_msg)
    time.sleep(0.3)
    payload = b"x" * 600  # about the size of an order.packed envelope
    t0 = time.perf_counter()
    for _ in range(n):
        while not pub.publish(topic, payload):
            time.sleep(0.001)
    done.wait(60)
    elapsed = time.perf_counter() - t0
    sub.stop()
    pub.stop()
    return got[0] / elapsed


def raw_db(url: str, n: int = 2000) -> float:
    engine = sa.create_engine(url)
    table = f"bench_{uuid.uuid4().hex[:8]}"
    with engine.begin() as c:
        c.execute(sa.text(f"CREATE TABLE {table} (id VARCHAR(36) PRIMARY KEY, qty INTEGER)"))
    try:
        t0 = time.perf_counter()
        for i in range(n):
            with engine.begin() as c:
                c.execute(sa.text(f"INSERT INTO {table} VALUES (:id, :q)"), {"id": str(uuid.uuid4()), "q": i})
        return n / (time.perf_counter() - t0)
    finally:
        with engine.begin() as c:
            c.execute(sa.text(f"DROP TABLE {table}"))
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=500)
    ap.add_argument("--database-url")
    ap.add_argument("--mqtt")
    ap.add_argument("--mqtt-protocol", type=int, default=5)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="packline-bench-"))
    db_url = a.database_url or f"sqlite:///{work / 'bench.db'}"
    broker = None
    if a.mqtt:
        mqtt_url, protocol = a.mqtt, a.mqtt_protocol
    else:
        broker = start_default_broker(work / "broker")
        mqtt_url, protocol = broker.url, broker.protocol
    try:
        mqtt_rate = raw_mqtt(mqtt_url, protocol)
        db_rate = raw_db(db_url if a.database_url else f"sqlite:///{work / 'raw.db'}")
        result = run_demo(DemoOptions(settings=Settings(data_dir=work / "data"), orders=a.orders,
                                      mqtt_url=mqtt_url, mqtt_protocol=protocol, database_url=db_url))
    finally:
        if broker:
            broker.stop()
    load = result.stats["load"]
    report = {
        "database": result.stats["database"],
        "broker": result.stats["broker"],
        "raw_mqtt_msgs_per_s": round(mqtt_rate, 1),
        "raw_db_commits_per_s": round(db_rate, 1),
        "flow": load,
        "flow_ok": result.ok,
        # each order costs at least: 2 MQTT messages (release, packed) + 1 ack, and ~4 write transactions
        "ratio_orders_per_s_to_raw_mqtt_msgs_per_s": round(load["orders_per_s"] / mqtt_rate, 4),
        "ratio_orders_per_s_to_raw_db_commits_per_s": round(load["orders_per_s"] / db_rate, 4),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
