"""Standard Webhooks signing, and delivery to a real HTTP receiver (with retries), on both databases."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from cloud.api import create_app
from cloud.db import make_engine, read_session, upgrade
from cloud.dbtypes import utcnow
from cloud.ingest import SqlCloudStore
from cloud.loader import load_dir
from cloud.webhooks import WebhookDispatcher, WebhookVerificationError, sign, verify
from sync import contract as c
from sync.settings import Settings
from tests.support import SAMPLE_DATA

# The published Standard Webhooks test vector (the reference libraries' own tests use it).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = '{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _headers(sig: str, ts: int = VECTOR_TS, msg_id: str = VECTOR_ID) -> dict[str, str]:
    return {"Webhook-Id": msg_id, "Webhook-Timestamp": str(ts), "Webhook-Signature": sig}


# --- pure signing -----------------------------------------------------------------------------------
def test_sign_matches_the_published_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY.encode()) == VECTOR_SIG


def test_verify_accepts_good_and_refuses_bad() -> None:
    verify(VECTOR_SECRET, _headers(VECTOR_SIG), VECTOR_BODY, now=VECTOR_TS + 10)
    verify(VECTOR_SECRET, _headers(f"v1,bm9wZQ== {VECTOR_SIG}"), VECTOR_BODY, now=VECTOR_TS)  # rotation
    bad_cases: list[tuple[dict[str, str], str, float]] = [
        (_headers(VECTOR_SIG), VECTOR_BODY.replace("2", "3"), VECTOR_TS),  # tampered body
        (_headers(VECTOR_SIG), VECTOR_BODY, VECTOR_TS + 301),  # too old
        (_headers(VECTOR_SIG), VECTOR_BODY, VECTOR_TS - 301),  # from the future
        (_headers(VECTOR_SIG, msg_id="msg_other"), VECTOR_BODY, VECTOR_TS),
        (_headers("v2," + VECTOR_SIG[3:]), VECTOR_BODY, VECTOR_TS),
        ({"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS)}, VECTOR_BODY, VECTOR_TS),
        (_headers(VECTOR_SIG, ts=0) | {"Webhook-Timestamp": "soon"}, VECTOR_BODY, VECTOR_TS),
    ]
    for headers, body, now in bad_cases:
        with pytest.raises(WebhookVerificationError):
            verify(VECTOR_SECRET, headers, body, now=now)
    with pytest.raises(WebhookVerificationError):
        verify("whsec_" + "A" * 32, _headers(VECTOR_SIG), VECTOR_BODY, now=VECTOR_TS)


# --- delivery -------------------------------------------------------------------------------------------
@dataclass
class Receiver:
    """A real HTTP endpoint that verifies what it gets; answers the scripted statuses, then 200."""

    secret: str = ""
    script: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes, bool]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verify(rec.secret, headers, body)
                ok = True
            except WebhookVerificationError:
                ok = False
            rec.received.append((headers, body, ok))
            status = rec.script.pop(0) if rec.script else 200
            self.send_response(status if ok else 400)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@dataclass
class Shop:
    engine: Engine
    client: TestClient
    secret: str
    auth: dict[str, str]


@pytest.fixture
def shop(db_url: str, tmp_path: Path, receiver: Receiver) -> Iterator[Shop]:
    seed = tmp_path / "seed"
    shutil.copytree(SAMPLE_DATA, seed)
    tenants = json.loads((seed / "tenants.json").read_text("utf-8"))
    tenants[0]["webhook_url"] = receiver.url  # acme-outdoor listens
    (seed / "tenants.json").write_text(json.dumps(tenants), "utf-8")
    engine = make_engine(db_url)
    upgrade(engine)
    keys = load_dir(engine, seed)
    receiver.secret = keys["acme-outdoor"]["webhook_secret"]
    app = create_app(Settings(data_dir=tmp_path), engine=engine)
    yield Shop(engine, TestClient(app), receiver.secret, {"Authorization": f"Bearer {keys['acme-outdoor']['api_key']}"})
    engine.dispose()


def _release(shop: Shop) -> dict[str, Any]:
    o = next(o for o in json.loads((SAMPLE_DATA / "orders.json").read_text("utf-8")) if o["external_id"] == "ACME-10001")
    r = shop.client.post("/v1/orders", json=o, headers=shop.auth)
    assert r.json()["status"] == "released"
    return dict(r.json())


def test_released_and_shipped_webhooks_arrive_signed(shop: Shop, receiver: Receiver) -> None:
    order = _release(shop)
    with httpx.Client() as http:
        dispatcher = WebhookDispatcher(shop.engine, http)
        assert dispatcher.deliver_due() == 1
        assert dispatcher.deliver_due() == 0  # nothing left
        packed = c.OrderPackedBody(
            order_id=order["id"],
            lines=[c.PackedLine(sku=ln["sku"], qty=ln["qty"], gtin="0") for ln in order["lines"]],
            tracking_number=order["shipment"]["tracking_number"],
            packed_at=c.utcnow(),
        )
        env = c.new_envelope(c.ORDER_PACKED, site=order["site"], seq=1, body=packed, tenant="acme-outdoor",
                             station="ST-DE-LEJ-1")
        assert SqlCloudStore(shop.engine).apply_station_event(env).status == "applied"
        assert dispatcher.deliver_due() == 1
    events = [json.loads(body) for _h, body, ok in receiver.received if ok]
    assert [e["type"] for e in events] == ["order.released", "order.shipped"]
    assert all(ok for _h, _b, ok in receiver.received)
    assert events[1]["data"]["tracking_number"] == order["shipment"]["tracking_number"]
    assert events[1]["data"]["order_id"] == order["id"]
    headers, body, _ok = receiver.received[1]
    assert headers["webhook-id"].startswith("msg_")
    with pytest.raises(WebhookVerificationError):  # a tampered body no longer verifies
        verify(shop.secret, headers, body.replace(b"shipped", b"stolen"))


def test_a_failed_delivery_is_retried_with_the_same_id(shop: Shop, receiver: Receiver) -> None:
    _release(shop)
    receiver.script = [500]
    now = [utcnow()]

    def clock() -> datetime:
        return now[0]

    with httpx.Client() as http:
        dispatcher = WebhookDispatcher(shop.engine, http, clock=clock, base_delay_s=5)
        assert dispatcher.deliver_due() == 0  # the receiver answered 500
        assert dispatcher.deliver_due() == 0  # not due yet: backing off
        now[0] += timedelta(seconds=6)
        assert dispatcher.deliver_due() == 1
    ids = [h["webhook-id"] for h, _b, _ok in receiver.received]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert receiver.received[0][1] == receiver.received[1][1]  # the same bytes every attempt
    with read_session(shop.engine) as s:
        row = s.connection().execute(
            sa.text("SELECT attempts, last_status, delivered_at FROM webhook_deliveries")
        ).one()
    assert row.attempts == 2 and row.last_status == 200 and row.delivered_at is not None


def test_delivery_gives_up_after_max_attempts(shop: Shop, receiver: Receiver) -> None:
    _release(shop)
    receiver.script = [503] * 10
    now = [utcnow()]
    with httpx.Client() as http:
        dispatcher = WebhookDispatcher(shop.engine, http, clock=lambda: now[0], max_attempts=3, base_delay_s=1)
        for _ in range(5):
            dispatcher.deliver_due()
            now[0] += timedelta(seconds=10)
    assert len(receiver.received) == 3
    with read_session(shop.engine) as s:
        row = s.connection().execute(
            sa.text("SELECT attempts, next_attempt_at, delivered_at, last_status FROM webhook_deliveries")
        ).one()
    assert (row.attempts, row.next_attempt_at, row.delivered_at, row.last_status) == (3, None, None, 503)


def test_run_forever_stops_on_request(shop: Shop, receiver: Receiver) -> None:
    _release(shop)
    stop = threading.Event()
    with httpx.Client() as http:
        dispatcher = WebhookDispatcher(shop.engine, http)
        worker = threading.Thread(target=dispatcher.run_forever, args=(stop, 0.05))
        worker.start()
        for _ in range(200):
            if receiver.received:
                break
            stop.wait(0.02)
        stop.set()
        worker.join(timeout=5)
    assert not worker.is_alive()
    assert len(receiver.received) == 1 and receiver.received[0][2]


def test_cancel_sends_order_cancelled(shop: Shop, receiver: Receiver) -> None:
    order = _release(shop)
    assert shop.client.post(f"/v1/orders/{order['id']}/cancel", headers=shop.auth).status_code == 200
    with httpx.Client() as http:
        assert WebhookDispatcher(shop.engine, http).deliver_due() == 2
    types = [json.loads(body)["type"] for _h, body, ok in receiver.received if ok]
    assert sorted(types) == ["order.cancelled", "order.released"]


def test_a_merchant_points_webhooks_at_an_endpoint_through_the_api(shop: Shop) -> None:
    got = shop.client.get("/v1/webhook", headers=shop.auth).json()
    assert got["secret"] == shop.secret
    r = shop.client.put("/v1/webhook", json={"url": "https://shop.example/hooks"}, headers=shop.auth)
    assert r.status_code == 200
    assert r.json() == {"url": "https://shop.example/hooks", "secret": shop.secret}  # secret kept
    bad = shop.client.put("/v1/webhook", json={"url": "ftp://x"}, headers=shop.auth)
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert shop.client.get("/v1/webhook", headers=shop.auth).json()["url"] == "https://shop.example/hooks"
    assert shop.client.put("/v1/webhook", json={"url": None}, headers=shop.auth).json()["url"] is None
    assert shop.client.get("/v1/webhook").status_code == 401
