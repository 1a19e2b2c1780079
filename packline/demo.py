"""``packline demo``: the whole main flow on one machine, with real joints.

cloud (FastAPI + SQLite/PostgreSQL) ── MQTT broker (private mosquitto / embedded / --mqtt) ── one
station per site (SQLite replica, scanner on a pty speaking real serial framing, Zebra simulator
on a loopback TCP port) ── a webhook receiver that verifies every signature.

Orders go in through the HTTP API; simulated packers scan bytes through the serial path; labels
print over TCP; packed events travel back over MQTT; the cloud posts the ledger and ships.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from cloud.server import CloudServer
from cloud.webhooks import verify as verify_webhook
from packline import wiring
from packline.webhook_receiver import WebhookReceiver
from sync.broker import RunningBroker, free_port, probe_mqtt_broker, start_default_broker
from sync.settings import Settings, parse_mqtt_url

__all__ = ["DemoOptions", "DemoResult", "run_demo"]

log = logging.getLogger("packline.demo")
SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data"


@dataclass
class DemoOptions:
    settings: Settings
    out: Path | None = None
    orders: int | None = None  # None: the sample orders once; N: a load run of N orders
    mqtt_url: str | None = None
    mqtt_protocol: int = 5  # of the broker at mqtt_url (3.1.1 = 311)
    database_url: str | None = None
    sample_dir: Path = SAMPLE_DATA
    timeout_s: float = 120.0
    concurrency: int = 8


@dataclass
class DemoOrder:
    external_id: str
    tenant: str
    id: str | None = None
    status: str | None = None
    site: str | None = None
    carrier: str | None = None
    tracking_number: str | None = None
    label_file: str | None = None
    reason: str | None = None
    created_at: float = 0.0
    shipped_at: float | None = None


@dataclass
class DemoResult:
    orders: list[DemoOrder]
    ok: bool
    problems: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "orders": [
                {
                    "id": o.id,
                    "external_id": o.external_id,
                    "tenant": o.tenant,
                    "status": o.status,
                    "site": o.site,
                    "carrier": o.carrier,
                    "tracking_number": o.tracking_number,
                    "label_file": o.label_file,
                    "reason": o.reason,
                }
                for o in self.orders
            ],
            "problems": self.problems,
            **self.stats,
        }


def _load(sample_dir: Path, name: str) -> list[dict[str, Any]]:
    path = sample_dir / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


@contextlib.contextmanager
def _broker(opts: DemoOptions, folder: Path) -> Iterator[tuple[str, int]]:
    if opts.mqtt_url:
        # a clear error for a bad URL, a closed port or something that is not an MQTT broker
        probe_mqtt_broker(parse_mqtt_url(opts.mqtt_url))
        yield opts.mqtt_url, opts.mqtt_protocol
        return
    broker: RunningBroker = start_default_broker(folder)
    log.info("broker: %s (MQTT %s)", broker.url, "5" if broker.protocol == 5 else "3.1.1")
    try:
        yield broker.url, broker.protocol
    finally:
        broker.stop()


def _order_plan(opts: DemoOptions, run_id: str, fresh_db: bool) -> list[dict[str, Any]]:
    samples = _load(opts.sample_dir, "orders")
    if opts.orders is None:
        if fresh_db:
            return samples
        return [{**o, "external_id": f"{o['external_id']}-{run_id}"} for o in samples]
    plan = []
    for i in range(opts.orders):
        o = samples[i % len(samples)]
        plan.append({**o, "external_id": f"{o['external_id']}-{run_id}-{i:05d}"})
    return plan


def run_demo(opts: DemoOptions) -> DemoResult:
    run_id = uuid.uuid4().hex[:6]
    # this run's cloud workers form their own group: another Packline on a shared broker
    # (--mqtt) neither steals nor answers this run's station events
    settings = opts.settings.model_copy(update={"cloud_group": f"packline-demo-{run_id}"})
    demo_dir = settings.data_dir / "demo"
    if demo_dir.exists():
        shutil.rmtree(demo_dir)  # demo state only: stations, broker, default DB, are made anew each run
    demo_dir.mkdir(parents=True)
    out = (opts.out or settings.data_dir / "out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    database_url = opts.database_url or f"sqlite:///{demo_dir / 'cloud.db'}"

    with _broker(opts, demo_dir / "broker") as (mqtt_url, protocol), contextlib.ExitStack() as stack:
        cloud = CloudServer(settings, database_url=database_url, mqtt_url=mqtt_url, protocol=protocol,
                            port=free_port())
        stack.callback(cloud.stop)
        cloud.start()
        fresh_db = cloud.process.is_empty()
        creds = cloud.load_dir(opts.sample_dir)

        receiver = WebhookReceiver(verify=verify_webhook).start()
        stack.callback(receiver.stop)
        http = httpx.Client(base_url=cloud.api_url, timeout=30.0)
        stack.callback(http.close)
        for tenant, c in creds.items():
            r = http.put("/v1/webhook", json={"url": receiver.url_for(tenant)},
                         headers={"authorization": f"Bearer {c['api_key']}"})
            r.raise_for_status()
            receiver.secrets[tenant] = r.json()["secret"]

        sites = [s["id"] for s in _load(opts.sample_dir, "sites")]
        stations = []
        for site in sites:
            # on a broker of our own the ids read like a floor's; on a shared one they carry the run id
            station_id = f"ST-{site}-1" if not opts.mqtt_url else f"ST-{site}-{run_id}"
            st = wiring.DemoStation(data_dir=demo_dir, site=site, station_id=station_id,
                                    mqtt_url=mqtt_url, protocol=protocol, cloud_url=cloud.api_url)
            stack.callback(st.stop)
            st.start()
            stations.append(st)
        for st in stations:
            if not st.wait_online(15):
                raise RuntimeError(f"station {st.station_id} did not connect to {mqtt_url}")

        plan = _order_plan(opts, run_id, fresh_db)
        opening = _load(opts.sample_dir, "stock")
        if opts.orders is not None:
            opening += _receive_for_load(http, creds, plan, opts.sample_dir)

        orders = [DemoOrder(external_id=o["external_id"], tenant=o["tenant"]) for o in plan]
        t_start = time.perf_counter()

        def create(i: int) -> None:
            o, d = plan[i], orders[i]
            body = {k: v for k, v in o.items() if k != "tenant"}
            d.created_at = time.perf_counter()
            r = http.post("/v1/orders", json=body, headers={
                "authorization": f"Bearer {creds[o['tenant']]['api_key']}",
                "idempotency-key": f"demo-{run_id}-{i}",
            })
            if r.status_code >= 400:
                d.status, d.reason = "rejected", f"HTTP {r.status_code}: {r.text[:300]}"
                return
            j = r.json()
            d.id, d.status, d.site = j["id"], j["status"], j.get("site")
            d.reason = j.get("reason")

        with ThreadPoolExecutor(max_workers=opts.concurrency if opts.orders else 1) as pool:
            list(pool.map(create, range(len(plan))))
        log.info("created %d orders in %.2fs", len(plan), time.perf_counter() - t_start)

        _wait_shipped(http, creds, orders, receiver, opts.timeout_s)
        wall_s = time.perf_counter() - t_start
        if any(o.status != "shipped" for o in orders):
            _quiesce(stations, http, creds, orders)  # so the ledger check compares a still picture
        cloud.process.drain_webhooks(timeout_s=10)

        _write_labels(orders, stations, out)
        problems = [f"{o.external_id}: {o.status} ({o.reason})" for o in orders if o.status != "shipped"]
        problems += cloud.process.ledger_problems()
        if fresh_db:  # on a fresh database the opening stock is the sample stock plus this run's receipts
            problems += _opening_minus_shipped(http, creds, opening, plan, orders)
        if receiver.failed:
            problems += [f"webhook signature failed: {f}" for f in receiver.failed[:10]]

        latencies = sorted((o.shipped_at - o.created_at) * 1000 for o in orders if o.shipped_at is not None)
        hooks = receiver.counts()
        stats: dict[str, Any] = {
            "broker": {"url": mqtt_url, "protocol": "5" if protocol == 5 else "3.1.1"},
            "database": cloud.database_kind,
            "out": str(out),
            "webhooks": {"verified": receiver.unique_ids(), "by_type": hooks, "failed": len(receiver.failed)},
            "stations": [st.summary() for st in stations],
            "ledger_checked": ("on hand = opening + receipts - shipped; reserved = open orders' holds; "
                               "balances = their movements" if fresh_db
                               else "balances = their movements; 0 <= reserved <= on hand"),
        }
        if opts.orders is not None:
            stats["load"] = {
                "orders": len(orders),
                "shipped": sum(o.status == "shipped" for o in orders),
                "wall_s": round(wall_s, 3),
                "orders_per_s": round(len(orders) / wall_s, 2) if wall_s else None,
                "p50_ms": round(_percentile(latencies, 50), 1) if latencies else None,
                "p99_ms": round(_percentile(latencies, 99), 1) if latencies else None,
                "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
            }
        return DemoResult(orders=orders, ok=not problems, problems=problems, stats=stats)


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _receive_for_load(http: httpx.Client, creds: dict[str, dict[str, str]], plan: list[dict[str, Any]],
                      sample_dir: Path) -> list[dict[str, Any]]:
    """Receive enough stock for a load run at every site that already stocks each SKU; returns the
    receipts as stock rows."""
    need: dict[tuple[str, str], int] = defaultdict(int)
    for o in plan:
        for line in o["lines"]:
            need[(o["tenant"], line["sku"])] += int(line["qty"])
    stocked: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in _load(sample_dir, "stock"):
        stocked[(row["tenant"], row["sku"])].add(row["site"])
    received: list[dict[str, Any]] = []
    for (tenant, sku), qty in need.items():
        for site in sorted(stocked[(tenant, sku)]):
            r = http.post("/v1/inventory/receipts", json={"sku": sku, "site": site, "qty": qty},
                          headers={"authorization": f"Bearer {creds[tenant]['api_key']}"})
            r.raise_for_status()
            received.append({"tenant": tenant, "sku": sku, "site": site, "qty": qty})
    return received


def _wait_shipped(http: httpx.Client, creds: dict[str, dict[str, str]], orders: list[DemoOrder],
                  receiver: WebhookReceiver, timeout_s: float) -> None:
    """Wait as a merchant does: for the ``order.shipped`` webhooks; then read each order once.
    Orders whose webhook has not come are polled slowly (a lost webhook must not hang the demo)."""
    deadline = time.perf_counter() + timeout_s
    waiting = {o.id: o for o in orders if o.id and o.status not in ("backordered", "on_hold", "rejected")}
    last_poll = time.perf_counter()
    while waiting and time.perf_counter() < deadline:
        for order_id in receiver.shipped_order_ids() & waiting.keys():
            _refresh(http, creds, waiting.pop(order_id))
        if time.perf_counter() - last_poll > 2.0:  # fallback: ask the API about what is still open
            last_poll = time.perf_counter()
            for o in list(waiting.values())[:50]:
                _refresh(http, creds, o)
                if o.status in ("shipped", "exception", "cancelled"):
                    waiting.pop(str(o.id))
        if waiting:
            time.sleep(0.05)
    for o in waiting.values():
        _refresh(http, creds, o)
        if o.status != "shipped":
            o.reason = o.reason or f"not shipped within {timeout_s:.0f}s (last status {o.status})"


def _refresh(http: httpx.Client, creds: dict[str, dict[str, str]], o: DemoOrder) -> None:
    r = http.get(f"/v1/orders/{o.id}", headers={"authorization": f"Bearer {creds[o.tenant]['api_key']}"})
    r.raise_for_status()
    j = r.json()
    o.status, o.site, o.reason = j["status"], j.get("site"), j.get("reason")
    shipment = j.get("shipment") or {}
    o.carrier, o.tracking_number = shipment.get("carrier"), shipment.get("tracking_number")
    if o.status == "shipped" and j.get("shipped_at"):
        # the cloud's clock stamps shipped_at; latency is measured on one machine, so clocks agree
        o.shipped_at = _to_perf(j["shipped_at"])


_PERF_OFFSET = time.time() - time.perf_counter()


def _to_perf(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - _PERF_OFFSET


def _quiesce(stations: list[wiring.DemoStation], http: httpx.Client, creds: dict[str, dict[str, str]],
             orders: list[DemoOrder], timeout_s: float = 10.0) -> None:
    """Stop packing, let what was packed reach the cloud, and read the open orders once more."""
    for st in stations:
        if st.packer:
            st.packer.stop()
    time.sleep(0.2)  # scans already on the serial line reach the engine
    for st in stations:
        if st.runtime:
            st.runtime.wait_idle(timeout_s)
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline and any(st.summary()["outbox_depth"] for st in stations):
        time.sleep(0.05)
    for o in orders:
        if o.id and o.status != "shipped":
            reason = o.reason
            _refresh(http, creds, o)
            if o.status != "shipped":
                o.reason = o.reason or reason


_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def label_file_name(tenant: str, external_id: str, taken: set[str]) -> str:
    """A file name for an order's label inside the output folder: never a path (a merchant's
    external id may hold ``/`` or ``..``), never one already taken (two tenants may share an id)."""
    safe = _UNSAFE_IN_NAME.sub("_", external_id).lstrip(".") or "order"
    name = f"{safe}.zpl"
    if name.lower() in taken:
        name = f"{_UNSAFE_IN_NAME.sub('_', tenant).lstrip('.')}_{safe}.zpl"
    n = 2
    while name.lower() in taken:
        name, n = f"{safe}_{n}.zpl", n + 1
    taken.add(name.lower())
    return name


def _write_labels(orders: list[DemoOrder], stations: list[wiring.DemoStation], out: Path) -> None:
    jobs = [job for st in stations for job in st.printed_jobs()]
    taken: set[str] = set()
    for o in orders:
        if not o.tracking_number:
            continue
        matches = [j for j in jobs if o.tracking_number.encode() in j]
        if not matches:
            if o.status == "shipped":
                o.reason = "shipped but no printed label found"
            continue
        name = label_file_name(o.tenant, o.external_id, taken)
        (out / name).write_bytes(matches[-1])
        o.label_file = name


def _opening_minus_shipped(http: httpx.Client, creds: dict[str, dict[str, str]], stock: list[dict[str, Any]],
                           plan: list[dict[str, Any]], orders: list[DemoOrder]) -> list[str]:
    """Through the merchant's API: on hand = opening - shipped, reserved = what open orders hold."""
    expected_on_hand: dict[tuple[str, str, str], int] = defaultdict(int)
    expected_reserved: dict[tuple[str, str, str], int] = defaultdict(int)
    for row in stock:
        expected_on_hand[(row["tenant"], row["sku"], row["site"])] += int(row["qty"])
    for o, d in zip(plan, orders, strict=True):
        for line in o["lines"]:
            key = (o["tenant"], line["sku"], d.site or "")
            if d.status == "shipped":
                expected_on_hand[key] -= int(line["qty"])
            elif d.status in ("released", "packing", "packed"):
                expected_reserved[key] += int(line["qty"])
    problems = []
    seen: set[tuple[str, str, str]] = set()
    for tenant, c in creds.items():
        r = http.get("/v1/inventory", headers={"authorization": f"Bearer {c['api_key']}"})
        r.raise_for_status()
        for item in r.json()["items"]:
            key = (tenant, item["sku"], item["site"])
            seen.add(key)
            if item["on_hand"] != expected_on_hand.get(key, 0):
                problems.append(f"ledger {key}: on hand {item['on_hand']} != opening - shipped "
                                f"{expected_on_hand.get(key, 0)}")
            if item["reserved"] != expected_reserved.get(key, 0):
                problems.append(f"ledger {key}: reserved {item['reserved']} != open orders' "
                                f"{expected_reserved.get(key, 0)}")
    for key, qty in expected_on_hand.items():
        if key not in seen and qty:
            problems.append(f"ledger {key}: missing from inventory (expected on hand {qty})")
    return problems
