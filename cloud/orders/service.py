"""Orders: create (validate → route → reserve → label → release), read, cancel.

Route handlers call :class:`OrderService`; every business rule lives here. A create is one
database transaction: the reservation, the order, its label, the site-feed entry and the
webhook message are committed together or not at all. Bad input is refused before anything
is written.

Idempotency (``Idempotency-Key``): the first response (status + body) is stored with a hash of
the validated request, in the same transaction; a retry with the same key and body gets that
response again without side effects, a retry with a different body is refused.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud import feed, ledger, webhooks
from cloud.carriers import Address, Carrier, CarrierError, CustomsItem, Label, Shipment
from cloud.catalog import load_products
from cloud.db import read_session, write_session
from cloud.dbtypes import utcnow
from cloud.errors import (
    CarrierUnavailable,
    Conflict,
    FieldProblem,
    InvalidRequest,
    NotFound,
    problems_from_pydantic,
)
from cloud.ids import order_id as new_order_id
from cloud.models import IdempotencyKey, Order, OrderLine, Product, Site, table
from cloud.models import Shipment as ShipmentRow
from cloud.orders.schemas import CancelIn, OrderIn, request_hash
from cloud.routing import SiteCandidate, needs_customs, rank_sites
from cloud.serials import SerialSource
from cloud.tenants import TenantContext
from cloud.validation import customs_problems, validate_ship_to
from sync import contract as c

__all__ = ["CANCELLABLE", "OrderResult", "OrderService", "order_view"]

log = logging.getLogger("packline.orders")

ORDERS = table(Order)
LINES = table(OrderLine)
SHIPMENTS = table(ShipmentRow)
SITES = table(Site)
IDEMPOTENCY = table(IdempotencyKey)

#: states an order can be cancelled from (everything before a station reports it packed)
CANCELLABLE = ("received", "on_hold", "backordered", "released", "packing")


@dataclass(frozen=True)
class OrderResult:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def order_view(
    order: Mapping[str, Any], lines: list[tuple[str, int]], shipment: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The API shape of an order (``GET /v1/orders/{id}``, create and cancel responses)."""
    return {
        "id": order["id"],
        "external_id": order["external_id"],
        "tenant": order["tenant"],
        "status": order["status"],
        "reason": order.get("reason"),
        "site": order.get("site"),
        "service_level": order["service_level"],
        "channel": order.get("channel"),
        "incoterm": order.get("incoterm"),
        "ship_to": order["ship_to"],
        "lines": [{"sku": sku, "qty": qty} for sku, qty in lines],
        "gift": order.get("gift"),
        "shipment": (
            {
                "carrier": shipment["carrier"],
                "service": shipment["service"],
                "tracking_number": shipment["tracking_number"],
                "voided": shipment.get("voided_at") is not None,
            }
            if shipment
            else None
        ),
        "created_at": _iso(order.get("created_at")),
        "updated_at": _iso(order.get("updated_at")),
        "shipped_at": _iso(order.get("shipped_at")),
    }


def _address(d: Mapping[str, Any]) -> Address:
    return Address(
        name=d.get("name", ""),
        street=d.get("street", ""),
        postal_code=d.get("postal_code", ""),
        city=d.get("city", ""),
        country=d["country"],
        company=d.get("company"),
        phone=d.get("phone"),
        email=d.get("email"),
    )


def _customs_data(p: Product | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"name": p.name, "hs_code": p.hs_code, "origin": p.origin, "value": p.value, "currency": p.currency}


class OrderService:
    def __init__(
        self,
        engine: Engine,
        carrier: Carrier,
        *,
        serials: SerialSource | None = None,
        on_feed: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.carrier = carrier
        self.serials = serials
        self.on_feed = on_feed

    # --- create ---------------------------------------------------------------------------------
    def create(
        self, tenant: TenantContext, payload: OrderIn | Mapping[str, Any], idempotency_key: str | None = None
    ) -> OrderResult:
        order = self._parse(payload)
        if order.tenant is not None and order.tenant != tenant.id:
            raise InvalidRequest(
                "the order names another tenant",
                errors=[FieldProblem("/tenant", "tenant_mismatch", f"must be {tenant.id!r} (the caller) or absent")],
            )
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
            raise InvalidRequest("Idempotency-Key must be 1..255 characters")
        digest = request_hash(order)
        ship_to, address_problems = validate_ship_to(
            order.ship_to.model_dump(exclude_none=True), service_level=order.service_level
        )
        problems = [FieldProblem(p.pointer, p.code, p.detail) for p in address_problems]
        try:
            with write_session(self.engine) as s:
                if idempotency_key is not None:
                    stored = self._stored(s, tenant.id, idempotency_key, digest)
                    if stored is not None:
                        return stored
                result, feed_written = self._create(s, tenant, order, ship_to, problems)
                if idempotency_key is not None:
                    s.connection().execute(
                        sa.insert(IDEMPOTENCY).values(
                            tenant=tenant.id,
                            key=idempotency_key,
                            request_hash=digest,
                            status_code=result.status_code,
                            response_json=json.dumps(result.body, separators=(",", ":")),
                            created_at=utcnow(),
                        )
                    )
        except sa.exc.IntegrityError:
            # a concurrent request won a unique constraint: the same key, or the same external_id
            with read_session(self.engine) as s:
                if idempotency_key is not None:
                    stored = self._stored(s, tenant.id, idempotency_key, digest)
                    if stored is not None:
                        return stored
                self._refuse_duplicate(s, tenant.id, order.external_id)
            raise
        if feed_written:
            self._notify_feed()
        return result

    def _parse(self, payload: OrderIn | Mapping[str, Any]) -> OrderIn:
        if isinstance(payload, OrderIn):
            return payload
        try:
            return OrderIn.model_validate(payload)
        except ValidationError as e:
            raise InvalidRequest("the order is not valid", errors=problems_from_pydantic(e.errors())) from None

    def _stored(self, s: Session, tenant: str, key: str, digest: str) -> OrderResult | None:
        row = s.connection().execute(
            sa.select(IDEMPOTENCY.c.request_hash, IDEMPOTENCY.c.status_code, IDEMPOTENCY.c.response_json).where(
                IDEMPOTENCY.c.tenant == tenant, IDEMPOTENCY.c.key == key
            )
        ).first()
        if row is None:
            return None
        if row.request_hash != digest:
            raise InvalidRequest(
                "idempotency key reused with a different request",
                code="idempotency_key_reused",
            )
        return OrderResult(int(row.status_code), json.loads(row.response_json), replayed=True)

    def _refuse_duplicate(self, s: Session, tenant: str, external_id: str) -> None:
        existing = s.connection().execute(
            sa.select(ORDERS.c.id).where(ORDERS.c.tenant == tenant, ORDERS.c.external_id == external_id)
        ).scalar()
        if existing is not None:
            raise Conflict(
                f"an order with external_id {external_id!r} exists",
                errors=[FieldProblem("/external_id", "duplicate", f"already used by order {existing}")],
                order_id=existing,
            )

    def _create(
        self,
        s: Session,
        tenant: TenantContext,
        order: OrderIn,
        ship_to: dict[str, Any],
        problems: list[FieldProblem],
    ) -> tuple[OrderResult, bool]:
        conn = s.connection()
        skus = [line.sku for line in order.lines]
        products = load_products(s, tenant.id, skus)
        for i, line in enumerate(order.lines):
            if line.sku not in products:
                problems.append(FieldProblem(f"/lines/{i}/sku", "unknown_sku", f"no product {line.sku!r}"))
        dest = ship_to.get("country")
        if problems or not dest:
            raise InvalidRequest("the order is not valid", errors=problems)
        self._refuse_duplicate(s, tenant.id, order.external_id)

        sites = {r.id: r for r in conn.execute(sa.select(SITES))}
        stock = ledger.availability(s, tenant.id, skus)
        wanted: dict[str, int] = defaultdict(int)
        for line in order.lines:
            wanted[line.sku] += line.qty
        candidates = [
            SiteCandidate(
                sid,
                sites[sid].lat,
                sites[sid].lon,
                all(stock[sid].get(sku, ledger.SiteStock(0, None)).available >= q for sku, q in wanted.items()),
            )
            for sid in sorted(stock)
            if sid in sites
        ]
        try:
            ranked = rank_sites(candidates, dest, ship_to.get("postal_code"))
        except ValueError:
            raise InvalidRequest(
                "the order is not valid",
                errors=[FieldProblem("/ship_to/country", "unsupported_country", f"we do not ship to {dest}")],
            ) from None
        oid = new_order_id()
        site_id: str | None = None
        for sid in ranked:  # nearest first; a concurrent order may have taken the stock meanwhile
            if ledger.reserve(s, tenant=tenant.id, site=sid, order_id=oid, lines=wanted.items()) is not None:
                site_id = sid
                break
        # customs data is checked against the site that will ship (raising rolls its reservation
        # back); a backorder against every site, as any of them may ship it later
        origins = [sites[site_id].country] if site_id else sorted({site.country for site in sites.values()})
        customs_lines = [(line.sku, _customs_data(products.get(line.sku))) for line in order.lines]
        for origin in origins:
            found = customs_problems(customs_lines, dest, origin, dest_postal_code=ship_to.get("postal_code"))
            if found:
                raise InvalidRequest(
                    f"customs data is missing for a parcel from {origin} to {dest}",
                    errors=[FieldProblem(p.pointer, p.code, p.detail) for p in found],
                )
        now = utcnow()
        row: dict[str, Any] = {
            "id": oid,
            "tenant": tenant.id,
            "external_id": order.external_id,
            "site": site_id,
            "ship_to": ship_to,
            "service_level": order.service_level,
            "channel": order.channel,
            "incoterm": order.incoterm,
            "gift": order.gift.model_dump() if order.gift else None,
            "created_at": now,
            "updated_at": now,
            "shipped_at": None,
        }
        lines = [(line.sku, line.qty) for line in order.lines]
        if site_id is None:
            row.update(
                status="backordered",
                reason="no site has stock for every line" if not ranked else "stock was taken by other orders",
            )
            conn.execute(sa.insert(ORDERS).values(**row))
            conn.execute(
                sa.insert(LINES), [{"order_id": oid, "line_no": i, "sku": k, "qty": q} for i, (k, q) in enumerate(lines)]
            )
            return OrderResult(201, order_view(row, lines, None)), False

        site = sites[site_id]
        weight_g = sum(products[sku].weight_g * qty for sku, qty in lines)
        customs: tuple[CustomsItem, ...] = ()
        if needs_customs(site.country, dest, dest_postal_code=ship_to.get("postal_code")):
            customs = tuple(
                CustomsItem(
                    sku=sku,
                    description=products[sku].name,
                    qty=qty,
                    hs_code=str(products[sku].hs_code),
                    origin=str(products[sku].origin),
                    unit_value=Decimal(str(products[sku].value)),
                    currency=str(products[sku].currency),
                    weight_g=products[sku].weight_g,
                )
                for sku, qty in lines
            )
        shipment = Shipment(
            reference=order.external_id,
            ship_from=Address(
                name=f"Packline {site.name}",
                street=site.street,
                postal_code=site.postal_code,
                city=site.city,
                country=site.country,
                company=tenant.name,
            ),
            ship_to=_address(ship_to),
            weight_g=weight_g,
            service_level=order.service_level,
            customs=customs,
            incoterm=order.incoterm,
            sender_name=tenant.name,
        )
        label = self._buy(s, shipment, order.service_level)
        row.update(status="released", reason=None)
        conn.execute(sa.insert(ORDERS).values(**row))
        conn.execute(
            sa.insert(LINES), [{"order_id": oid, "line_no": i, "sku": k, "qty": q} for i, (k, q) in enumerate(lines)]
        )
        ship_row = {
            "order_id": oid,
            "carrier": label.carrier,
            "service": label.service,
            "tracking_number": label.tracking_number,
            "zpl": label.zpl,
            "weight_g": weight_g,
            "created_at": now,
            "voided_at": None,
        }
        conn.execute(sa.insert(SHIPMENTS).values(**ship_row))
        at_site = stock[site_id]
        body = c.OrderReleasedBody(
            order_id=oid,
            external_id=order.external_id,
            tenant=tenant.id,
            service_level=order.service_level,
            ship_to=c.ShipToSummary(name=ship_to.get("name", ""), city=ship_to.get("city", ""), country=dest),
            lines=[
                c.ReleasedLine(
                    sku=sku,
                    name=products[sku].name,
                    qty=qty,
                    gtins=products[sku].gtins,
                    lot_tracked=products[sku].lot_tracked,
                    bin=at_site[sku].bin if sku in at_site else None,
                )
                for sku, qty in lines
            ],
            label=c.LabelInfo(
                carrier=label.carrier, service=label.service, tracking_number=label.tracking_number, zpl=label.zpl
            ),
            expected_weight_g=weight_g,
        )
        feed.append(s, site=site_id, type_=c.ORDER_RELEASED, body=body, tenant=tenant.id)
        if tenant.webhook_url:
            webhooks.enqueue(
                s,
                tenant.id,
                "order.released",
                {
                    "order_id": oid,
                    "external_id": order.external_id,
                    "status": "released",
                    "site": site_id,
                    "carrier": label.carrier,
                    "service": label.service,
                    "tracking_number": label.tracking_number,
                },
            )
        return OrderResult(201, order_view(row, lines, ship_row)), True

    def _buy(self, s: Session, shipment: Shipment, service: str) -> Label:
        try:
            if self.serials is None:
                return self.carrier.buy(shipment, service)
            with self.serials.bound(s):
                return self.carrier.buy(shipment, service)
        except CarrierError as e:
            raise CarrierUnavailable(f"no label could be bought: {e}", retry_after_s=5) from None

    def _notify_feed(self) -> None:
        if self.on_feed is None:
            return
        try:
            self.on_feed()
        except Exception:  # the commit is done; the feed publisher also polls
            log.exception("on_feed callback failed")

    # --- read -------------------------------------------------------------------------------------
    def _load(self, s: Session, tenant: str, oid: str) -> tuple[dict[str, Any], list[tuple[str, int]], Any]:
        conn = s.connection()
        row = conn.execute(sa.select(ORDERS).where(ORDERS.c.id == oid, ORDERS.c.tenant == tenant)).first()
        if row is None:
            raise NotFound(f"no order {oid!r}")
        lines = [
            (sku, int(qty))
            for sku, qty in conn.execute(
                sa.select(LINES.c.sku, LINES.c.qty).where(LINES.c.order_id == oid).order_by(LINES.c.line_no)
            )
        ]
        shipment = conn.execute(
            sa.select(SHIPMENTS).where(SHIPMENTS.c.order_id == oid).order_by(SHIPMENTS.c.id.desc()).limit(1)
        ).first()
        return dict(row._mapping), lines, shipment._mapping if shipment else None

    def get(self, tenant: TenantContext, oid: str) -> dict[str, Any]:
        with read_session(self.engine) as s:
            order, lines, shipment = self._load(s, tenant.id, oid)
        return order_view(order, lines, shipment)

    def find_by_external_id(self, tenant: TenantContext, external_id: str) -> dict[str, Any]:
        """The merchant's own reference is how their systems look an order up."""
        with read_session(self.engine) as s:
            oid = s.connection().execute(
                sa.select(ORDERS.c.id).where(ORDERS.c.tenant == tenant.id, ORDERS.c.external_id == external_id)
            ).scalar()
            if oid is None:
                raise NotFound(f"no order with external_id {external_id!r}")
            order, lines, shipment = self._load(s, tenant.id, oid)
        return order_view(order, lines, shipment)

    def label(self, tenant: TenantContext, oid: str) -> tuple[str, str]:
        """(tracking number, ZPL) of the order's current label; 404 if it has none (backordered, voided)."""
        with read_session(self.engine) as s:
            order, _lines, shipment = self._load(s, tenant.id, oid)
        if order["status"] == "cancelled" or shipment is None or shipment.get("voided_at") is not None:
            raise NotFound(f"order {oid!r} has no valid label (status {order['status']})")
        return str(shipment["tracking_number"]), str(shipment["zpl"])

    # --- cancel -----------------------------------------------------------------------------------
    def cancel(self, tenant: TenantContext, oid: str, request: CancelIn | None = None) -> dict[str, Any]:
        """Cancel before packed: void the holds, tell the site, void the label. Cancelling a
        cancelled order answers its state again; a packed or shipped order is a conflict."""
        reason = (request.reason if request else None) or "cancelled by merchant"
        with write_session(self.engine) as s:
            conn = s.connection()
            now = utcnow()
            changed = conn.execute(
                sa.update(ORDERS)
                .where(ORDERS.c.id == oid, ORDERS.c.tenant == tenant.id, ORDERS.c.status.in_(CANCELLABLE))
                .values(status="cancelled", reason=reason, updated_at=now)
                .returning(ORDERS.c.site, ORDERS.c.external_id)
            ).first()
            order, lines, shipment = self._load(s, tenant.id, oid)  # 404 for other tenants' orders
            if changed is None:
                if order["status"] == "cancelled":
                    return order_view(order, lines, shipment)
                raise Conflict(
                    f"order {oid} is {order['status']}; only orders that are not packed yet can be cancelled",
                    errors=[FieldProblem("/status", "not_cancellable", f"status is {order['status']}")],
                )
            ledger.void_order(s, oid)
            if changed.site is not None:
                feed.append(
                    s,
                    site=changed.site,
                    type_=c.ORDER_CANCELLED,
                    body=c.OrderCancelledBody(order_id=oid, reason=reason),
                    tenant=tenant.id,
                )
            if tenant.webhook_url:
                webhooks.enqueue(
                    s,
                    tenant.id,
                    "order.cancelled",
                    {"order_id": oid, "external_id": changed.external_id, "status": "cancelled", "reason": reason},
                )
        if changed.site is not None:
            self._notify_feed()
        if shipment is not None and shipment.get("voided_at") is None:
            shipment = self._void_label(shipment) or shipment
        return order_view(order, lines, shipment)

    def _void_label(self, shipment: Mapping[str, Any]) -> dict[str, Any] | None:
        """Void the label after the cancel committed (a carrier call never holds DB locks).
        A failure is logged and leaves ``voided_at`` empty for a later sweep."""
        label = Label(shipment["carrier"], shipment["service"], shipment["tracking_number"], shipment["zpl"])
        try:
            self.carrier.void(label)
        except CarrierError as e:
            log.warning("could not void label %s: %s", label.tracking_number, e)
            return None
        now = utcnow()
        with write_session(self.engine) as s:
            s.connection().execute(
                sa.update(SHIPMENTS).where(SHIPMENTS.c.id == shipment["id"]).values(voided_at=now)
            )
        return {**shipment, "voided_at": now}
