"""The cloud API end to end through FastAPI's TestClient, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import json
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
from cloud.carriers import is_valid_s10
from cloud.db import make_engine, read_session, upgrade
from cloud.ingest import SqlCloudStore
from cloud.loader import load_dir
from sync import contract as c
from sync.settings import Settings
from tests.support import SAMPLE_DATA

ORDERS: list[dict[str, Any]] = json.loads((SAMPLE_DATA / "orders.json").read_text("utf-8"))
PROBLEM = "application/problem+json"


@dataclass
class Api:
    engine: Engine
    client: TestClient
    keys: dict[str, dict[str, Any]]
    feed_calls: list[int]

    def auth(self, tenant: str = "acme-outdoor") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]['api_key']}"}

    def post_order(self, order: dict[str, Any], **headers: str) -> Any:
        return self.client.post("/v1/orders", json=order, headers={**self.auth(order["tenant"]), **headers})

    def count(self, table: str) -> int:
        with read_session(self.engine) as s:
            return int(s.connection().execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())

    def invariants(self) -> list[str]:
        with read_session(self.engine) as s:
            return ledger.check_invariants(s)


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    engine = make_engine(db_url)
    upgrade(engine)
    keys = load_dir(engine, SAMPLE_DATA)
    calls: list[int] = []
    app = create_app(Settings(data_dir=tmp_path), engine=engine, on_feed=lambda: calls.append(1))
    yield Api(engine, TestClient(app), keys, calls)
    engine.dispose()


def order(external_id: str) -> dict[str, Any]:
    return copy.deepcopy(next(o for o in ORDERS if o["external_id"] == external_id))


def feed_envelopes(engine: Engine) -> list[c.Envelope]:
    return [c.decode(e.payload) for e in SqlCloudStore(engine).unpublished_feed(1000)]


# --- happy path -----------------------------------------------------------------------------------
def test_every_sample_order_is_released_from_the_nearest_site(api: Api) -> None:
    bodies = {}
    for o in ORDERS:
        r = api.post_order(o)
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"/v1/orders/{r.json()['id']}"
        bodies[o["external_id"]] = r.json()
    assert {b["status"] for b in bodies.values()} == {"released"}
    sites = {k: b["site"] for k, b in bodies.items()}
    assert sites["ACME-10001"] == "DE-LEJ"  # Berlin
    assert sites["ACME-10002"] == "PL-POZ"  # Warsaw
    assert sites["ACME-10004"] == "NL-VNL"  # Paris: Venlo is nearer than Leipzig
    assert sites["ACME-10006"] == "DE-LEJ"  # only Leipzig has the headlamp
    assert sites["NT-5005"] == "NL-VNL"  # the case SKU is stocked in Venlo only
    for b in bodies.values():
        assert b["id"].startswith("ord_")
        assert is_valid_s10(b["shipment"]["tracking_number"])
    assert len({b["shipment"]["tracking_number"] for b in bodies.values()}) == len(ORDERS)
    assert bodies["ACME-10002"]["ship_to"]["phone"] == "+48221234567"  # normalised to E.164

    envs = feed_envelopes(api.engine)
    assert [e.type for e in envs] == [c.ORDER_RELEASED] * len(ORDERS)
    for site in {e.site for e in envs}:  # gap-free per site
        assert [e.seq for e in envs if e.site == site] == list(range(1, 1 + sum(e.site == site for e in envs)))
    released = {e.body["external_id"]: c.parse_body(e, c.OrderReleasedBody) for e in envs}
    for ext in ("ACME-10005", "ACME-10006", "NT-5004"):  # CH, GB, NO: customs declaration on the label
        zpl = released[ext].label.zpl
        assert "CUSTOMS DECLARATION CN 22" in zpl
        for line in released[ext].lines:
            hs = json.loads((SAMPLE_DATA / "products.json").read_text("utf-8"))
            assert next(p["hs_code"] for p in hs if p["sku"] == line.sku) in zpl
    assert "CN 22" not in released["ACME-10001"].label.zpl
    tea = released["NT-5001"].lines[0]
    assert tea.gtins == ["07310001234568"] and tea.lot_tracked and tea.bin == "A-02-3"
    assert released["ACME-10001"].expected_weight_g == 2150 + 2 * 95
    assert api.feed_calls  # the publisher was told after each commit
    assert api.invariants() == []

    got = api.client.get(f"/v1/orders/{bodies['ACME-10001']['id']}", headers=api.auth())
    assert got.status_code == 200 and got.json() == bodies["ACME-10001"]
    inv = api.client.get("/v1/inventory", params={"sku": "TENT-2P-GRN", "site": "DE-LEJ"}, headers=api.auth())
    assert inv.json()["items"] == [
        {"sku": "TENT-2P-GRN", "site": "DE-LEJ", "on_hand": 40, "reserved": 2, "available": 38, "bin": "A-01-2"}
    ]


def test_loading_twice_does_not_double_stock_and_old_keys_stay_valid(api: Api) -> None:
    again = load_dir(api.engine, SAMPLE_DATA)
    assert again["acme-outdoor"]["api_key"] != api.keys["acme-outdoor"]["api_key"]
    assert again["acme-outdoor"]["webhook_secret"] == api.keys["acme-outdoor"]["webhook_secret"]
    for key in (again["acme-outdoor"]["api_key"], api.keys["acme-outdoor"]["api_key"]):
        r = api.client.get("/v1/inventory", params={"sku": "TENT-2P-GRN"}, headers={"Authorization": f"Bearer {key}"})
        assert [i["on_hand"] for i in r.json()["items"]] == [40, 5]
    assert api.invariants() == []


def test_out_of_stock_is_backordered_without_reservation_or_label(api: Api) -> None:
    o = order("ACME-10001")
    o["external_id"] = "ACME-BIG"
    o["lines"] = [{"sku": "TENT-2P-GRN", "qty": 41}]  # 40 in Leipzig, 5 in Poznań: no single site
    r = api.post_order(o)
    assert r.status_code == 201
    body = r.json()
    assert body["status"] == "backordered" and body["site"] is None and body["shipment"] is None
    assert "no site" in body["reason"]
    assert api.count("holds") == 0 and api.count("shipments") == 0 and api.count("feed") == 0


def _receive(api: Api, sku: str, site: str, qty: int) -> dict[str, Any]:
    r = api.client.post("/v1/inventory/receipts", json={"sku": sku, "site": site, "qty": qty}, headers=api.auth())
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_a_backorder_is_released_when_its_stock_arrives(api: Api) -> None:
    api.client.put("/v1/webhook", json={"url": "https://merchant.example/hooks"}, headers=api.auth())
    older, newer = order("ACME-10001"), order("ACME-10001")
    older["external_id"], newer["external_id"] = "ACME-BACK-1", "ACME-BACK-2"
    older["lines"] = newer["lines"] = [{"sku": "HEAD-300", "qty": 26}]  # 25 on hand, in Leipzig
    first, second = api.post_order(older).json(), api.post_order(newer).json()
    assert first["status"] == second["status"] == "backordered"

    assert _receive(api, "HEAD-300", "PL-POZ", 10)["backorders_released"] == []  # Poznań 10: not enough
    receipt = _receive(api, "HEAD-300", "DE-LEJ", 1)  # Leipzig 26: enough for one of them
    assert receipt["backorders_released"] == [first["id"]]  # the older first
    got = api.client.get(f"/v1/orders/{first['id']}", headers=api.auth()).json()
    assert (got["status"], got["site"], got["reason"]) == ("released", "DE-LEJ", None)
    assert is_valid_s10(got["shipment"]["tracking_number"])
    assert api.client.get(f"/v1/orders/{second['id']}", headers=api.auth()).json()["status"] == "backordered"
    (release,) = [e for e in feed_envelopes(api.engine) if e.type == c.ORDER_RELEASED]
    assert release.site == "DE-LEJ" and release.body["order_id"] == first["id"]
    assert api.count("webhook_deliveries") >= 1
    with read_session(api.engine) as s:
        hooks = s.connection().execute(sa.text("SELECT event_type, payload FROM webhook_deliveries")).all()
    assert [t for t, p in hooks if first["id"] in p] == ["order.released"]
    stock = api.client.get("/v1/inventory", params={"sku": "HEAD-300", "site": "DE-LEJ"}, headers=api.auth())
    assert {k: stock.json()["items"][0][k] for k in ("on_hand", "reserved")} == {"on_hand": 26, "reserved": 26}
    assert api.invariants() == []


def test_a_cancel_that_frees_stock_releases_a_backorder(api: Api) -> None:
    big = order("ACME-10001")
    big["external_id"], big["lines"] = "ACME-ALL-GAS", [{"sku": "HEAD-300", "qty": 25}]  # every lamp
    held = api.post_order(big).json()
    assert held["status"] == "released"
    waiting = order("ACME-10001")
    waiting["external_id"], waiting["lines"] = "ACME-ONE-GAS", [{"sku": "HEAD-300", "qty": 1}]
    backordered = api.post_order(waiting).json()
    assert backordered["status"] == "backordered"
    assert api.client.post(f"/v1/orders/{held['id']}/cancel", headers=api.auth()).json()["status"] == "cancelled"
    got = api.client.get(f"/v1/orders/{backordered['id']}", headers=api.auth()).json()
    assert got["status"] == "released" and got["shipment"] is not None
    assert api.invariants() == []


def test_a_backorder_the_carrier_refuses_does_not_hold_up_the_ones_after_it(api: Api) -> None:
    heavy = order("ACME-10001")
    heavy["external_id"] = "ACME-88KG"
    heavy["lines"] = [{"sku": "TENT-2P-GRN", "qty": 41}, {"sku": "HEAD-300", "qty": 1}]  # 88 kg: no label
    light = order("ACME-10001")
    light["external_id"], light["lines"] = "ACME-LAMPS", [{"sku": "HEAD-300", "qty": 26}]
    heavy_id, light_id = api.post_order(heavy).json()["id"], api.post_order(light).json()["id"]
    assert _receive(api, "TENT-2P-GRN", "DE-LEJ", 1)["backorders_released"] == []  # the carrier says no
    assert _receive(api, "HEAD-300", "DE-LEJ", 1)["backorders_released"] == [light_id]
    assert api.client.get(f"/v1/orders/{heavy_id}", headers=api.auth()).json()["status"] == "backordered"
    assert api.count("holds") == 1 and api.invariants() == []


def test_a_repeated_receipt_releases_nothing_twice(api: Api) -> None:
    o = order("ACME-10001")
    o["external_id"], o["lines"] = "ACME-BACK-R", [{"sku": "HEAD-300", "qty": 26}]
    created = api.post_order(o).json()
    mid = str(uuid.uuid4())
    receipt = {"sku": "HEAD-300", "site": "DE-LEJ", "qty": 1, "movement_id": mid}
    first = api.client.post("/v1/inventory/receipts", json=receipt, headers=api.auth()).json()
    again = api.client.post("/v1/inventory/receipts", json=receipt, headers=api.auth()).json()
    assert first["backorders_released"] == [created["id"]] and again["backorders_released"] == []
    assert api.count("holds") == 1 and api.count("shipments") == 1
    assert api.invariants() == []


# --- idempotency -------------------------------------------------------------------------------------
def test_idempotency_key_replays_the_first_response(api: Api) -> None:
    o = order("ACME-10001")
    first = api.post_order(o, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    again = api.post_order(dict(reversed(list(o.items()))), **{"Idempotency-Key": "k-1"})  # same body, other order
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert api.count("orders") == 1 and api.count("holds") == 2 and api.count("feed") == 1

    changed = copy.deepcopy(o)
    changed["lines"][0]["qty"] = 2
    r = api.post_order(changed, **{"Idempotency-Key": "k-1"})
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["detail"] == "idempotency key reused with a different request"
    assert api.count("orders") == 1


def test_duplicate_external_id_is_a_conflict(api: Api) -> None:
    assert api.post_order(order("ACME-10001")).status_code == 201
    r = api.post_order(order("ACME-10001"))
    assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["errors"][0]["pointer"] == "/external_id"
    assert api.count("orders") == 1


# --- validation ---------------------------------------------------------------------------------------
def _pointers(r: Any) -> dict[str, str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    return {e.get("pointer", e.get("parameter")): e["code"] for e in r.json()["errors"]}


@pytest.mark.parametrize(
    ("mutate", "pointer", "code"),
    [
        (lambda o: o["ship_to"].update(postal_code="1234"), "/ship_to/postal_code", "invalid_postal_code"),
        (lambda o: o["lines"][1].update(sku="NO-SUCH-SKU"), "/lines/1/sku", "unknown_sku"),
        (lambda o: o["lines"][0].update(qty=0), "/lines/0/qty", "greater_than"),
        (lambda o: o["lines"][0].update(qty=True), "/lines/0/qty", "int_type"),
        (lambda o: o["lines"][0].update(qty="2"), "/lines/0/qty", "int_type"),
        (lambda o: o["ship_to"].pop("street"), "/ship_to/street", "required"),
        (lambda o: o.update(tenant="nordic-tea"), "/tenant", "tenant_mismatch"),
        (lambda o: o.update(colour="red"), "/colour", "extra_forbidden"),
        (lambda o: o.update(lines=[]), "/lines", "too_short"),
        (lambda o: o.update(external_id="   "), "/external_id", "blank"),
        (lambda o: o.update(external_id="\u200b\u2060"), "/external_id", "blank"),
        (lambda o: o.update(external_id="ACME\u202e1"), "/external_id", "control_character"),
        (lambda o: o["ship_to"].update(name="\u200b"), "/ship_to/name", "required"),
        (lambda o: o["ship_to"].update(name=" \ufeff\u00ad\u200d "), "/ship_to/name", "required"),
        (lambda o: o["ship_to"].update(street="\u3164"), "/ship_to/street", "required"),
        (lambda o: o["ship_to"].update(city="\u2800\u200c"), "/ship_to/city", "required"),
    ],
)
def test_bad_orders_get_pointed_problems_and_write_nothing(api: Api, mutate: Any, pointer: str, code: str) -> None:
    o = order("ACME-10001")
    mutate(o)
    r = api.client.post("/v1/orders", json=o, headers=api.auth())
    assert _pointers(r).get(pointer) == code, r.json()
    assert api.count("orders") == 0 and api.count("holds") == 0 and api.count("feed") == 0


def test_missing_customs_data_is_refused(api: Api) -> None:
    product = {"sku": "NO-HS", "name": "Mystery box", "gtins": ["4006381333986"], "weight_g": 500,
               "origin": "DE", "value": "10.00", "currency": "EUR"}
    assert api.client.post("/v1/products", json=product, headers=api.auth()).status_code == 201
    receipt = {"sku": "NO-HS", "site": "DE-LEJ", "qty": 5}
    assert api.client.post("/v1/inventory/receipts", json=receipt, headers=api.auth()).status_code == 201
    o = order("ACME-10005")  # to Bern: outside the EU customs union
    o["lines"] = [{"sku": "TENT-2P-GRN", "qty": 1}, {"sku": "NO-HS", "qty": 1}]
    assert _pointers(api.post_order(o)) == {"/lines/1/sku": "missing_hs_code"}
    o["ship_to"] = order("ACME-10001")["ship_to"]  # Berlin: no declaration needed
    assert api.post_order(o).json()["status"] == "released"


def test_customs_data_is_checked_for_the_site_that_really_ships(api: Api) -> None:
    """The nearest site (London, domestic: no declaration) has no stock, so Leipzig ships to London:
    that parcel needs the HS code the product lacks. Refused, and nothing stays reserved."""
    from cloud.db import write_session
    from cloud.models import Site

    with write_session(api.engine) as s:
        s.add(Site(id="GB-LON", name="London", country="GB", postal_code="E16 2QU", city="London",
                   street="1 Dock Road", lat=51.507, lon=0.03, timezone="Europe/London"))
    product = {"sku": "NO-HS", "name": "Mystery box", "gtins": ["4006381333986"], "weight_g": 500,
               "origin": "DE", "value": "10.00", "currency": "EUR"}
    assert api.client.post("/v1/products", json=product, headers=api.auth()).status_code == 201
    for site, qty in (("DE-LEJ", 5), ("GB-LON", 1)):
        r = api.client.post("/v1/inventory/receipts", json={"sku": "NO-HS", "site": site, "qty": qty},
                            headers=api.auth())
        assert r.status_code == 201
    o = order("ACME-10006")  # to London
    o["lines"] = [{"sku": "NO-HS", "qty": 1}]
    first = api.post_order(o)
    assert first.status_code == 201 and first.json()["site"] == "GB-LON"  # domestic: no declaration needed
    o["external_id"] = "ACME-LON-2"
    assert _pointers(api.post_order(o)) == {"/lines/0/sku": "missing_hs_code"}  # London is empty now
    levels = {i["site"]: i["reserved"] for i in api.client.get("/v1/inventory", params={"sku": "NO-HS"},
                                                               headers=api.auth()).json()["items"]}
    assert levels == {"DE-LEJ": 0, "GB-LON": 1}
    assert api.invariants() == []


def test_malformed_json_is_a_problem(api: Api) -> None:
    r = api.client.post("/v1/orders", content=b"{nope", headers={**api.auth(), "content-type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["errors"][0]["code"] == "json_invalid"


# --- auth ------------------------------------------------------------------------------------------------
def test_requests_need_a_valid_api_key(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        r = api.client.get("/v1/inventory", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_other_tenants_orders_are_not_found(api: Api) -> None:
    oid = api.post_order(order("NT-5001")).json()["id"]
    r = api.client.get(f"/v1/orders/{oid}", headers=api.auth("acme-outdoor"))
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM)
    assert api.client.post(f"/v1/orders/{oid}/cancel", headers=api.auth("acme-outdoor")).status_code == 404
    assert api.client.get(f"/v1/orders/{oid}", headers=api.auth("nordic-tea")).status_code == 200
    tea = api.client.get("/v1/inventory", headers=api.auth("acme-outdoor")).json()["items"]
    assert not any(i["sku"].startswith("TEA") for i in tea)


# --- cancel ----------------------------------------------------------------------------------------------
def test_cancel_before_packing_voids_holds_label_and_tells_the_site(api: Api) -> None:
    created = api.post_order(order("ACME-10001")).json()
    r = api.client.post(f"/v1/orders/{created['id']}/cancel", json={"reason": "customer changed mind"},
                        headers=api.auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled" and body["reason"] == "customer changed mind"
    assert body["shipment"]["voided"] is True
    inv = api.client.get("/v1/inventory", params={"site": "DE-LEJ"}, headers=api.auth()).json()["items"]
    assert all(i["reserved"] == 0 for i in inv)
    envs = feed_envelopes(api.engine)
    assert [(e.type, e.site, e.seq) for e in envs] == [(c.ORDER_RELEASED, "DE-LEJ", 1), (c.ORDER_CANCELLED, "DE-LEJ", 2)]
    assert envs[1].body["order_id"] == created["id"]
    again = api.client.post(f"/v1/orders/{created['id']}/cancel", headers=api.auth())
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert api.invariants() == []


def test_cancel_after_shipping_is_a_conflict(api: Api) -> None:
    created = api.post_order(order("ACME-10002")).json()
    packed = c.OrderPackedBody(
        order_id=created["id"],
        lines=[c.PackedLine(sku="SOCK-MW-42", qty=3, gtin="05901234123457")],
        tracking_number=created["shipment"]["tracking_number"],
        packed_at=c.utcnow(),
    )
    env = c.new_envelope(c.ORDER_PACKED, site="PL-POZ", seq=1, body=packed, tenant="acme-outdoor", station="ST-1")
    assert SqlCloudStore(api.engine).apply_station_event(env).status == "applied"
    r = api.client.post(f"/v1/orders/{created['id']}/cancel", headers=api.auth())
    assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM)
    assert api.client.get(f"/v1/orders/{created['id']}", headers=api.auth()).json()["status"] == "shipped"


# --- products and inventory -----------------------------------------------------------------------------
def test_product_upsert_and_gtin_check_digits(api: Api) -> None:
    product = {"sku": "BOTTLE-1L", "name": "Bottle 1 l", "gtins": ["4006381333986"], "weight_g": 180}
    r = api.client.post("/v1/products", json=product, headers=api.auth())
    assert r.status_code == 201 and r.json()["gtins"] == ["04006381333986"]
    r = api.client.post("/v1/products", json={**product, "name": "Bottle 1 litre"}, headers=api.auth())
    assert r.status_code == 200 and r.json()["name"] == "Bottle 1 litre"
    bad = api.client.post("/v1/products", json={**product, "gtins": ["4006381333987"]}, headers=api.auth())
    assert "/gtins/0" in _pointers(bad)
    other = api.client.post("/v1/products", json={**product, "tenant": "nordic-tea"}, headers=api.auth())
    assert _pointers(other) == {"/tenant": "tenant_mismatch"}


def test_receipts_are_idempotent_by_movement_id(api: Api) -> None:
    mid = str(uuid.uuid4())
    receipt = {"sku": "GAS-230", "site": "DE-LEJ", "qty": 10, "movement_id": mid}
    first = api.client.post("/v1/inventory/receipts", json=receipt, headers=api.auth())
    assert first.status_code == 201 and first.json()["applied"] is True
    assert first.json()["stock"]["on_hand"] == 110
    second = api.client.post("/v1/inventory/receipts", json=receipt, headers=api.auth())
    assert second.status_code == 200 and second.json()["applied"] is False
    assert second.json()["stock"]["on_hand"] == 110
    bad = api.client.post("/v1/inventory/receipts", json={**receipt, "sku": "TEA-EG-100", "site": "XX"},
                          headers=api.auth())
    assert _pointers(bad) == {"/sku": "unknown_sku", "/site": "unknown_site"}  # another tenant's sku
    assert api.invariants() == []


@pytest.mark.parametrize("change", [
    {"sku": "HEAD-300", "qty": 500},  # another sku, with stock
    {"sku": "TENT-2P-GRN", "site": "NL-VNL"},  # a (sku, site) that has no stock row yet
    {"qty": 11},
])
def test_a_movement_id_reused_for_another_receipt_is_a_conflict_and_changes_nothing(
    api: Api, change: dict[str, Any]
) -> None:
    mid = str(uuid.uuid4())
    receipt = {"sku": "GAS-230", "site": "DE-LEJ", "qty": 5, "movement_id": mid}
    assert api.client.post("/v1/inventory/receipts", json=receipt, headers=api.auth()).status_code == 201
    before = api.client.get("/v1/inventory", headers=api.auth()).json()
    again = api.client.post("/v1/inventory/receipts", json={**receipt, **change}, headers=api.auth())
    assert again.status_code == 409, again.text
    assert again.headers["content-type"].startswith("application/problem+json")
    assert [(e["pointer"], e["code"]) for e in again.json()["errors"]] == [("/movement_id", "movement_id_reused")]
    assert api.client.get("/v1/inventory", headers=api.auth()).json() == before
    assert api.invariants() == []


def test_another_tenants_movement_id_is_a_conflict_not_a_500(api: Api) -> None:
    mid = str(uuid.uuid4())
    mine = {"sku": "GAS-230", "site": "DE-LEJ", "qty": 5, "movement_id": mid}
    assert api.client.post("/v1/inventory/receipts", json=mine, headers=api.auth()).status_code == 201
    theirs = {"sku": "TEA-EG-100", "site": "NL-VNL", "qty": 5, "movement_id": mid}
    r = api.client.post("/v1/inventory/receipts", json=theirs, headers=api.auth("nordic-tea"))
    assert r.status_code == 409 and "GAS-230" not in r.text  # nothing of the other tenant leaks
    assert api.invariants() == []


# --- the rest of the surface ------------------------------------------------------------------------------
def test_docs_openapi_health_and_unknown_routes(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    spec = api.client.get("/openapi.json").json()
    assert "/v1/orders" in spec["paths"] and "/v1/inventory/receipts" in spec["paths"]
    docs = api.client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text and "cdn" not in docs.text.lower()
    assert "/v1/orders/{order_id}/cancel" in docs.text
    r = api.client.get("/v1/nothing-here", headers=api.auth())
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM)


def test_carrier_failure_is_a_retryable_problem_and_writes_nothing(db_url: str, tmp_path: Path) -> None:
    from cloud.carriers import SandboxCarrier

    engine = make_engine(db_url)
    upgrade(engine)
    keys = load_dir(engine, SAMPLE_DATA)
    client = TestClient(create_app(Settings(data_dir=tmp_path), engine=engine, carrier=SandboxCarrier(fail_rate=1.0)))
    try:
        o = order("ACME-10001")
        r = client.post("/v1/orders", json=o, headers={"Authorization": f"Bearer {keys['acme-outdoor']['api_key']}",
                                                        "Idempotency-Key": "retry-me"})
        assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM)
        assert r.headers["retry-after"] == "5"
        with read_session(engine) as s:
            conn = s.connection()
            for table in ("orders", "holds", "shipments", "feed", "idempotency_keys"):
                assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() == 0, table
            assert ledger.check_invariants(s) == []
    finally:
        engine.dispose()


def test_cancel_a_backordered_order(api: Api) -> None:
    o = order("ACME-10001")
    o["lines"] = [{"sku": "GAS-230", "qty": 1000}]
    created = api.post_order(o).json()
    assert created["status"] == "backordered"
    r = api.client.post(f"/v1/orders/{created['id']}/cancel", headers=api.auth())
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["shipment"] is None
    assert api.count("feed") == 0  # no site was ever told about it


def test_merchants_look_orders_up_by_their_reference_and_fetch_the_label(api: Api) -> None:
    created = api.client.post("/v1/orders", json=order("ACME-10007"), headers=api.auth()).json()
    found = api.client.get("/v1/orders", params={"external_id": "ACME-10007"}, headers=api.auth())
    assert found.status_code == 200 and found.json()["id"] == created["id"]
    missing = api.client.get("/v1/orders", params={"external_id": "NOPE"}, headers=api.auth())
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
    label = api.client.get(f"/v1/orders/{created['id']}/label", headers=api.auth())
    assert label.status_code == 200 and label.headers["content-type"].startswith("application/zpl")
    zpl = label.content.decode("utf-8")
    assert zpl.startswith("^XA") and zpl.count("^XZ") == 1 and "Γιώργος" in zpl
    assert created["shipment"]["tracking_number"] in zpl
    assert api.client.get(f"/v1/orders/{created['id']}/label").status_code == 401
    api.client.post(f"/v1/orders/{created['id']}/cancel", headers=api.auth())
    assert api.client.get(f"/v1/orders/{created['id']}/label", headers=api.auth()).status_code == 404


# --- control characters (PostgreSQL cannot store NUL; nothing of ours wants C0 controls) ------------------
@pytest.mark.parametrize(("method", "path", "body", "where"), [
    ("post", "/v1/products", {"sku": "CTRL-1", "name": "Bad\x00name", "gtins": ["4006381333979"], "weight_g": 1},
     {"pointer": "/name"}),
    ("post", "/v1/orders", {**{k: v for k, v in ORDERS[0].items() if k != "tenant"}, "channel": "web\x00"},
     {"pointer": "/channel"}),
    ("post", "/v1/inventory/receipts", {"sku": "GAS-230", "site": "DE-LEJ", "qty": 1, "bin": "A\x1b[2J"},
     {"pointer": "/bin"}),
    ("put", "/v1/webhook", {"url": "https://example.com/\x00"}, {"pointer": "/url"}),
    ("get", "/v1/orders?external_id=a%00b", None, {"parameter": "external_id"}),
    ("get", "/v1/orders/a%00b", None, {"parameter": "order_id"}),
    ("get", "/v1/inventory?sku=a%00b", None, {"parameter": "sku"}),
    ("post", "/v1/orders/a%00b/cancel", {"reason": "x"}, {"parameter": "order_id"}),
])
def test_control_characters_anywhere_are_a_422_with_their_place_and_change_nothing(
    api: Api, method: str, path: str, body: dict[str, Any] | None, where: dict[str, str]
) -> None:
    counts = {t: api.count(t) for t in ("products", "orders", "movements")}
    stock = api.client.get("/v1/inventory", headers=api.auth()).json()
    r = api.client.request(method, path, json=body, headers=api.auth())
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    (error,) = r.json()["errors"]
    assert error["code"] == "control_character" and where.items() <= error.items(), error
    assert {t: api.count(t) for t in counts} == counts
    assert api.client.get("/v1/inventory", headers=api.auth()).json() == stock
    assert api.client.get("/v1/webhook", headers=api.auth()).json()["url"] is None


def test_text_with_tabs_newlines_and_escaped_backslashes_still_goes_through(api: Api) -> None:
    product = {"sku": "TAB-1", "name": "Tea \\u0000 (literally)", "gtins": ["4006381333979"], "weight_g": 1}
    r = api.client.post("/v1/products", json=product, headers=api.auth())
    assert r.status_code == 201, r.text
    assert r.json()["name"] == product["name"]
    created = api.post_order(order("ACME-10001")).json()  # a product name prints; a cancel reason may wrap
    reason = "Line one\nline\ttwo \\u0000 (literally)"
    r = api.client.post(f"/v1/orders/{created['id']}/cancel", json={"reason": reason}, headers=api.auth())
    assert r.status_code == 200, r.text
    assert r.json()["reason"] == reason


# --- input the reviewer found too lenient ----------------------------------------------------------------
PRODUCT = {"sku": "BOTTLE-1L", "name": "Bottle 1 l", "gtins": ["4006381333986"], "weight_g": 180}


@pytest.mark.parametrize(("name", "code"), [
    ("   ", "blank"),
    ("\u200b\u2060", "blank"),
    ("Bottle\n1 l", "control_character"),
    ("Bottle\t1 l", "control_character"),
    ("Bottle \u202e1 l", "control_character"),
    ("Bottle\u20281 l", "control_character"),
    ("x" * 201, "string_too_long"),
])
def test_product_names_follow_the_ship_to_text_rules(api: Api, name: str, code: str) -> None:
    before = api.count("products")
    r = api.client.post("/v1/products", json={**PRODUCT, "name": name}, headers=api.auth())
    assert _pointers(r) == {"/name": code}
    assert api.count("products") == before


def test_product_names_are_normalised_like_ship_to_text(api: Api) -> None:
    r = api.client.post("/v1/products", json={**PRODUCT, "name": "  Bottle   1 l "}, headers=api.auth())
    assert r.status_code == 201 and r.json()["name"] == "Bottle 1 l"


def test_a_gtin_of_another_sku_is_a_conflict_naming_it(api: Api) -> None:
    before = api.count("products")
    taken = {**PRODUCT, "gtins": ["4006381333986", "4006381333931"]}  # the second is TENT-2P-GRN's
    r = api.client.post("/v1/products", json=taken, headers=api.auth())
    assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM)
    (error,) = r.json()["errors"]
    assert (error["pointer"], error["code"]) == ("/gtins/1", "gtin_in_use") and "TENT-2P-GRN" in error["detail"]
    padded = {**PRODUCT, "gtins": ["04006381333931"]}  # the same GTIN written as GTIN-14
    assert api.client.post("/v1/products", json=padded, headers=api.auth()).status_code == 409
    assert api.count("products") == before

    tent = next(p for p in json.loads((SAMPLE_DATA / "products.json").read_text("utf-8")) if p["sku"] == "TENT-2P-GRN")
    again = api.client.post("/v1/products", json={k: v for k, v in tent.items() if k != "tenant"}, headers=api.auth())
    assert again.status_code == 200, again.text  # its own GTIN: the upsert still works
    other_tenant = api.client.post("/v1/products", json={**PRODUCT, "gtins": ["4006381333931"]},
                                   headers=api.auth("nordic-tea"))
    assert other_tenant.status_code == 201  # catalogues are per tenant
    moved = {**tent, "gtins": []}
    moved.pop("tenant")
    assert api.client.post("/v1/products", json=moved, headers=api.auth()).status_code == 200
    assert api.client.post("/v1/products", json=padded, headers=api.auth()).status_code == 201  # free now


@pytest.mark.parametrize(("change", "pointer", "code"), [
    ({"origin": "XX"}, "/origin", "invalid_country"),
    ({"origin": "UK"}, "/origin", "invalid_country"),
    ({"currency": "ABC"}, "/currency", "invalid_currency"),
    ({"currency": "XAU"}, "/currency", "invalid_currency"),  # gold is not money on a customs form
    ({"dims_mm": [10**20, 1, 1]}, "/dims_mm/0", "less_than_equal"),
    ({"dims_mm": [300, 10_001, 1]}, "/dims_mm/1", "less_than_equal"),
    ({"dims_mm": [1e20, 1, 1]}, "/dims_mm/0", "int_parsing_size"),
    ({"weight_g": 1_000_001}, "/weight_g", "less_than_equal"),
    ({"shelf_life_days": 2**40}, "/shelf_life_days", "less_than_equal"),  # an INTEGER column on PostgreSQL
    ({"contains": {"sku": "MUG-TI-450", "qty": 10**30}}, "/contains/qty", "less_than_equal"),
])
def test_customs_codes_and_sizes_are_checked(api: Api, change: dict[str, Any], pointer: str, code: str) -> None:
    before = api.count("products")
    r = api.client.post("/v1/products", json={**PRODUCT, **change}, headers=api.auth())
    assert _pointers(r) == {pointer: code}
    assert api.count("products") == before


def test_real_codes_and_sizes_still_go_through(api: Api) -> None:
    good = {**PRODUCT, "origin": "XK", "currency": "XOF", "value": "1500", "dims_mm": [10_000, 1, 1],
            "weight_g": 1_000_000, "shelf_life_days": 36_500}
    r = api.client.post("/v1/products", json=good, headers=api.auth())
    assert r.status_code == 201, r.text
    assert (r.json()["origin"], r.json()["currency"], r.json()["dims_mm"]) == ("XK", "XOF", [10_000, 1, 1])


@pytest.mark.parametrize("url", [
    "http:///path", "https://:443/x", "http://127.0.0.1:99999/x", "http://host:http/x", "http://host:0/",
    "http://user:pass@host/", "https://token@host/", "http://[::1/x", "ftp://host/x",
])
def test_webhook_urls_need_a_host_a_valid_port_and_no_credentials(api: Api, url: str) -> None:
    r = api.client.put("/v1/webhook", json={"url": url}, headers=api.auth())
    assert set(_pointers(r)) == {"/url"}
    assert api.client.get("/v1/webhook", headers=api.auth()).json()["url"] is None


@pytest.mark.parametrize("url", ["http://127.0.0.1:8099/hooks", "https://[::1]:9443/x", "http://localhost/x",
                                 "https://shop.example/hooks?tenant=acme"])
def test_loopback_and_ordinary_webhook_urls_are_fine(api: Api, url: str) -> None:
    r = api.client.put("/v1/webhook", json={"url": url}, headers=api.auth())
    assert r.status_code == 200 and r.json()["url"] == url


def test_an_oversize_body_is_a_problem_whether_announced_or_streamed(api: Api) -> None:
    from cloud.api.app import MAX_BODY_BYTES

    body = json.dumps({**PRODUCT, "name": "x" * MAX_BODY_BYTES}).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    headers = {**api.auth(), "content-type": "application/json"}
    for content in (body, chunks()):
        r = api.client.post("/v1/products", content=content, headers=headers)
        assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM), r.text
        assert r.json()["status"] == 413 and str(MAX_BODY_BYTES) in r.json()["detail"]
    assert api.count("products") == 10


@pytest.mark.parametrize(("method", "path", "body", "code"), [
    ("post", "/v1/products", b'{"sku": "\xff\xfe", "name": "x"}', "json_invalid"),
    ("post", "/v1/orders", b"[" * 100_000, "json_too_deep"),
    ("put", "/v1/webhook", b'{"url": ' * 50_000, "json_too_deep"),
    ("get", "/v1/inventory", b"[" * 100_000 + b'"\\u0001"', None),  # no JSON body here: ignored, not a 500
])
def test_bodies_that_are_not_json_are_a_problem_at_the_body(
    api: Api, method: str, path: str, body: bytes, code: str | None
) -> None:
    r = api.client.request(method, path, content=body, headers={**api.auth(), "content-type": "application/json"})
    if code is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    (error,) = r.json()["errors"]
    assert (error["pointer"], error["code"]) == ("", code) and error["detail"]


def test_malformed_json_says_where(api: Api) -> None:
    r = api.client.post("/v1/orders", content=b'{"a": 1,}', headers={**api.auth(), "content-type": "application/json"})
    (error,) = r.json()["errors"]
    assert error["pointer"] == "" and "character 8" in error["detail"], error


def test_idempotency_key_problems_name_the_header(api: Api) -> None:
    o = order("ACME-10001")
    assert api.post_order(o, **{"Idempotency-Key": "k-1"}).status_code == 201
    reused = api.post_order({**o, "channel": "web"}, **{"Idempotency-Key": "k-1"})
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    assert reused.json()["errors"] == [{"parameter": "Idempotency-Key", "in": "header", "code": "idempotency_key_reused",
                                        "detail": reused.json()["errors"][0]["detail"]}]
    for key in ("", "k" * 256):
        o["external_id"] = f"ACME-KEY-{len(key)}"
        r = api.post_order(o, **{"Idempotency-Key": key})
        assert r.status_code == 422
        assert [(e["parameter"], e["in"]) for e in r.json()["errors"]] == [("Idempotency-Key", "header")]
    assert api.count("orders") == 1


def test_the_openapi_limits_of_ship_to_are_the_enforced_ones(api: Api) -> None:
    from cloud.validation import MAX_FIELD_LEN

    spec = api.client.get("/openapi.json").json()
    fields = spec["components"]["schemas"]["ShipToIn"]["properties"]
    assert {name: f["anyOf"][0]["maxLength"] for name, f in fields.items()} == dict.fromkeys(fields, MAX_FIELD_LEN)
    o = order("ACME-10001")
    o["ship_to"]["company"] = "x" * (MAX_FIELD_LEN + 1)
    assert set(_pointers(api.post_order(o))) == {"/ship_to/company"}
    o["ship_to"]["company"] = "x" * MAX_FIELD_LEN
    assert api.post_order(o).status_code == 201


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_json_endpoint_answers_415_for_another_media_type(api: Api, content_type: str | None) -> None:
    headers = {**api.auth(), **({"content-type": content_type} if content_type else {})}
    r = api.client.post("/v1/products", content=json.dumps(PRODUCT).encode(), headers=headers)
    assert r.status_code == 415 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert "application/json" in r.json()["detail"]
    assert [(e["parameter"], e["code"]) for e in r.json()["errors"]] == [("Content-Type", "unsupported_media_type")]
    assert api.count("products") == 10
    ok = api.client.post("/v1/products", content=json.dumps(PRODUCT).encode(),
                         headers={**api.auth(), "content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 201


@pytest.mark.parametrize("path", ["/v1/orders/{id}", "/v1/orders/{id}/label"])
def test_values_quoted_back_in_a_problem_are_cut_short(api: Api, path: str) -> None:
    r = api.client.get(path.format(id="a" * 10_000), headers=api.auth())
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM)
    assert len(r.json()["detail"]) < 150 and "…" in r.json()["detail"]


def test_two_skus_racing_for_one_gtin_get_it_once(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second writer checks the GTIN while the first has checked but not yet written it: the
    per-tenant catalogue lock makes it wait and then see the first one's GTIN."""
    import threading
    import time

    from cloud import catalog
    from cloud.errors import Conflict

    first_checked, second_started = threading.Event(), threading.Event()
    real_upsert = catalog.upsert_product

    def slow_first_upsert(session: Any, tenant: str, product: Any) -> bool:
        if product.sku == "RACE-A":
            first_checked.set()
            second_started.wait(10)
            time.sleep(0.5)  # the second request runs its check now, unless it waits for this one
        return real_upsert(session, tenant, product)

    monkeypatch.setattr(catalog, "upsert_product", slow_first_upsert)
    outcomes: dict[str, Any] = {}

    def save(sku: str) -> None:
        try:
            outcomes[sku] = catalog.save_product(api.engine, "acme-outdoor", catalog.ProductIn(
                sku=sku, name=sku, gtins=["4006381333986"], weight_g=1))
        except Exception as e:  # the Conflict, or whatever went wrong
            outcomes[sku] = e

    a = threading.Thread(target=save, args=("RACE-A",))
    a.start()
    assert first_checked.wait(10)
    b = threading.Thread(target=save, args=("RACE-B",))
    b.start()
    second_started.set()
    a.join(20)
    b.join(20)
    assert isinstance(outcomes["RACE-A"], tuple) and outcomes["RACE-A"][0] is True
    assert isinstance(outcomes["RACE-B"], Conflict), outcomes["RACE-B"]
    assert [e.pointer for e in outcomes["RACE-B"].errors] == ["/gtins/0"]
