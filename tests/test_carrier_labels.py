"""Every sample order gets a label that an independent renderer draws as ONE label whose Code 128 decodes
to exactly the tracking number (zpl-renderer-js under node + zxing-cpp; see tests/zpl_render.py)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any

import pytest

from cloud.carriers import Address, CustomsItem, Label, SandboxCarrier, Shipment, is_valid_s10
from cloud.routing import SiteCandidate, needs_customs, rank_sites
from tests.support import SAMPLE_DATA
from tests.zpl_render import decode_barcodes, render_many

pytestmark = pytest.mark.node

PRINTED_AT = datetime(2025, 3, 14, 9, 26, tzinfo=UTC)


def _load(name: str) -> Any:
    return json.loads((SAMPLE_DATA / name).read_text("utf-8"))


@cache
def sample() -> dict[str, Any]:
    return {name: _load(f"{name}.json") for name in ("orders", "products", "sites", "stock", "tenants")}


def site_address(site: dict[str, Any]) -> Address:
    return Address(name=f"Packline {site['name']}", street=site["street"], postal_code=site["postal_code"],
                   city=site["city"], country=site["country"], company=f"Packline {site['id']}")


def shipment_for(order: dict[str, Any]) -> Shipment:
    """The shipment the cloud would buy for a sample order: nearest site with stock, customs from products."""
    data = sample()
    products = {(p["tenant"], p["sku"]): p for p in data["products"]}
    on_hand: dict[tuple[str, str], int] = {}
    for row in data["stock"]:
        if row["tenant"] == order["tenant"]:
            on_hand[(row["site"], row["sku"])] = on_hand.get((row["site"], row["sku"]), 0) + row["qty"]
    candidates = [
        SiteCandidate(site["id"], site["lat"], site["lon"],
                      all(on_hand.get((site["id"], line["sku"]), 0) >= line["qty"] for line in order["lines"]))
        for site in data["sites"]
    ]
    ship_to = order["ship_to"]
    ranked = rank_sites(candidates, ship_to["country"], ship_to["postal_code"])
    assert ranked, f"{order['external_id']}: no site can ship it"
    site = next(s for s in data["sites"] if s["id"] == ranked[0])
    lines = [(products[(order["tenant"], line["sku"])], line["qty"]) for line in order["lines"]]
    customs: tuple[CustomsItem, ...] = ()
    if needs_customs(site["country"], ship_to["country"], dest_postal_code=ship_to["postal_code"]):
        customs = tuple(
            CustomsItem(sku=p["sku"], description=p["name"], qty=qty, hs_code=p["hs_code"], origin=p["origin"],
                        unit_value=Decimal(p["value"]), currency=p["currency"], weight_g=p["weight_g"])
            for p, qty in lines
        )
    tenant = next(t for t in data["tenants"] if t["id"] == order["tenant"])
    return Shipment(
        reference=order["external_id"],
        ship_from=site_address(site),
        ship_to=Address(name=ship_to["name"], street=ship_to["street"], postal_code=ship_to["postal_code"],
                        city=ship_to["city"], country=ship_to["country"], company=ship_to.get("company"),
                        phone=ship_to.get("phone"), email=ship_to.get("email")),
        weight_g=sum(p["weight_g"] * qty for p, qty in lines) + 150,  # + carton
        service_level=order["service_level"],
        customs=customs,
        incoterm=order.get("incoterm"),
        sender_name=tenant["name"],
    )


def carrier() -> SandboxCarrier:
    return SandboxCarrier(rng=random.Random(7), clock=lambda: PRINTED_AT)


def sample_labels() -> list[tuple[str, Label]]:
    c = carrier()
    out = []
    for order in sample()["orders"]:
        s = shipment_for(order)
        out.append((order["external_id"], c.buy(s, s.service_level)))
    return out


def hostile_labels() -> list[tuple[str, Label]]:
    """Injection attempts, long texts, many customs items, Greek and diacritics."""
    c = carrier()
    orders = {o["external_id"]: o for o in sample()["orders"]}
    ch = shipment_for(orders["ACME-10005"])  # Bern: needs customs
    gr = shipment_for(orders["ACME-10007"])
    evil = replace(ch, ship_to=replace(ch.ship_to, name="Evil ^XZ~JR Corp", company="^XA^FO0,0^GB812,1218,812^FS _5E \\& ~HS"),
                   reference="R^XZ~JR")
    long_text = replace(gr, ship_to=replace(
        gr.ship_to,
        name="Ζαχαρίας Παπαχριστοδουλόπουλος-Αναστασόπουλος Κωνσταντινουπολίτης",
        company="Przedsiębiorstwo Wielobranżowe Zażółć Gęślą Jaźń Spółka z ograniczoną odpowiedzialnością",
        street="Náměstí Přemysla Otakara II. 1234/56, Příliš žluťoučký kůň úpěl ďábelské ódy 😀 " * 3,
        city="Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
    ))
    many = replace(ch, customs=tuple(
        CustomsItem(sku=f"SKU-{i}", description=f"Item {i} with a rather long description that must be cut",
                    qty=i + 1, hs_code="6306220000", origin="VN", unit_value=Decimal("1234567.89"), currency="EUR",
                    weight_g=100)
        for i in range(8)
    ), incoterm="DDP")
    return [(name, c.buy(s, "express")) for name, s in (("evil", evil), ("long", long_text), ("many", many))]


def test_every_sample_order_renders_one_label_whose_barcode_is_the_tracking_number() -> None:
    labels = sample_labels() + hostile_labels()
    assert len(labels) == len(sample()["orders"]) + 3
    t0 = time.monotonic()
    rendered = render_many([label.zpl for _, label in labels])
    elapsed = time.monotonic() - t0
    assert len(rendered) == len(labels)
    for (name, label), pngs in zip(labels, rendered, strict=True):
        assert is_valid_s10(label.tracking_number), name
        assert len(pngs) == 1, f"{name}: {len(pngs)} labels rendered"
        codes = decode_barcodes(pngs[0])
        assert codes == [("Code 128", label.tracking_number)], f"{name}: decoded {codes}"
    print(f"rendered and decoded {len(labels)} labels in {elapsed:.2f}s")


def test_injected_commands_print_as_text() -> None:
    (_, label), *_ = hostile_labels()
    assert label.zpl.count("^XA") == 1 and label.zpl.count("^XZ") == 1 and label.zpl.endswith("^XZ")
    assert "~" not in label.zpl
    assert "Evil _5EXZ_7EJR Corp" in label.zpl
    [png] = render_many([label.zpl])[0]
    assert decode_barcodes(png) == [("Code 128", label.tracking_number)]


def test_greek_and_diacritics_reach_the_printer_as_utf8() -> None:
    labels = dict(sample_labels() + hostile_labels())
    greek = labels["ACME-10007"].zpl.encode("utf-8")
    assert "Γιώργος Παπαδόπουλος".encode() in greek
    assert "Αθήνα".encode() in greek
    assert b"^CI28" in greek
    czech = labels["ACME-10003"].zpl.encode("utf-8")
    assert "Staroměstské náměstí 1".encode() in czech
    polish = labels["ACME-10002"].zpl.encode("utf-8")
    assert "ul. Marszałkowska 142".encode() in polish
    long_ = labels["long"].zpl.encode("utf-8")  # cut to fit, but still UTF-8
    assert "Przedsiębiorstwo Wielobranżowe".encode() in long_
    assert "Příliš žluťoučký".encode() in long_
