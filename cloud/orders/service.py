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
from collections.abc import Callable, Iterable, Mapping
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
from cloud.validation import customs_problems, echo, validate_ship_to
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


@dataclass(frozen=True)
class _Placement:
    """Where routing put an order: every site, the ranked ones that could ship it all, and the
    site that took the reservation (``None``: backordered) with its stock (for bins)."""

    sites: dict[str, Any]
    ranked: list[str]
    site: Any | None
    stock: dict[str, ledger.SiteStock]


class _IdempotencyKeyProblem(FieldProblem):
    """A problem with the ``Idempotency-Key`` header, in the shape the API gives every header or
    parameter problem (``{"parameter", "in", "detail", "code"}``, :mod:`cloud.api.problems`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__("", code, detail)

    def as_dict(self) -> dict[str, str]:
        return {"parameter": "Idempotency-Key", "in": "header", "detail": self.detail, "code": self.code}


class _StillBackordered(Exception):
    """Rolls a backorder's release attempt back: nothing of it stays."""


def _customs_refusal(
    lines: list[tuple[str, int]], products: Mapping[str, Product], ship_to: Mapping[str, Any], origins: list[str]
) -> InvalidRequest | None:
    """The refusal for a parcel from any of ``origins`` whose customs data is missing, else None."""
    dest = ship_to["country"]
    customs_lines = [(sku, _customs_data(products.get(sku))) for sku, _qty in lines]
    for origin in origins:
        found = customs_problems(customs_lines, dest, origin, dest_postal_code=ship_to.get("postal_code"))
        if found:
            return InvalidRequest(
                f"customs data is missing for a parcel from {origin} to {dest}",
                errors=[FieldProblem(p.pointer, p.code, p.detail) for p in found],
            )
    return None


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
            raise InvalidRequest(
                "Idempotency-Key must be 1..255 characters",
                errors=[_IdempotencyKeyProblem("invalid_idempotency_key", "must be 1..255 characters")],
            )
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
                errors=[_IdempotencyKeyProblem(
                    "idempotency_key_reused",
                    "already used for a different request; retry with the same body, or use a new key",
                )],
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

        oid = new_order_id()
        lines = [(line.sku, line.qty) for line in order.lines]
        try:
            placed = self._route_and_reserve(s, tenant.id, oid, lines, ship_to)
        except ValueError:
            raise InvalidRequest(
                "the order is not valid",
                errors=[FieldProblem("/ship_to/country", "unsupported_country", f"we do not ship to {dest}")],
            ) from None
        # customs data is checked against the site that will ship (raising rolls its reservation
        # back); a backorder against every site, as any of them may ship it later
        origins = [placed.site.country] if placed.site else sorted({site.country for site in placed.sites.values()})
        refusal = _customs_refusal(lines, products, ship_to, origins)
        if refusal is not None:
            raise refusal
        now = utcnow()
        row: dict[str, Any] = {
            "id": oid,
            "tenant": tenant.id,
            "external_id": order.external_id,
            "site": placed.site.id if placed.site else None,
            "ship_to": ship_to,
            "service_level": order.service_level,
            "channel": order.channel,
            "incoterm": order.incoterm,
            "gift": order.gift.model_dump() if order.gift else None,
            "created_at": now,
            "updated_at": now,
            "shipped_at": None,
        }
        if placed.site is None:
            row.update(
                status="backordered",
                reason="no site has stock for every line" if not placed.ranked else "stock was taken by other orders",
            )
        else:
            row.update(status="released", reason=None)
        conn.execute(sa.insert(ORDERS).values(**row))
        conn.execute(
            sa.insert(LINES), [{"order_id": oid, "line_no": i, "sku": k, "qty": q} for i, (k, q) in enumerate(lines)]
        )
        if placed.site is None:
            return OrderResult(201, order_view(row, lines, None)), False
        ship_row = self._release(s, tenant, row, lines, products, placed, now)
        return OrderResult(201, order_view(row, lines, ship_row)), True

    def _route_and_reserve(
        self, s: Session, tenant: str, oid: str, lines: list[tuple[str, int]], ship_to: Mapping[str, Any]
    ) -> _Placement:
        """Rank the sites that can ship every line, nearest first, and reserve at the first that
        still can (a concurrent order may have taken the stock meanwhile). ``ValueError`` for a
        destination we have no routing data for."""
        sites = {r.id: r for r in s.connection().execute(sa.select(SITES))}
        wanted: dict[str, int] = defaultdict(int)
        for sku, qty in lines:
            wanted[sku] += qty
        stock = ledger.availability(s, tenant, list(wanted))
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
        ranked = rank_sites(candidates, ship_to["country"], ship_to.get("postal_code"))
        for sid in ranked:
            if ledger.reserve(s, tenant=tenant, site=sid, order_id=oid, lines=wanted.items()) is not None:
                return _Placement(sites, ranked, sites[sid], stock[sid])
        return _Placement(sites, ranked, None, {})

    def _release(
        self,
        s: Session,
        tenant: TenantContext,
        order: Mapping[str, Any],
        lines: list[tuple[str, int]],
        products: Mapping[str, Product],
        placed: _Placement,
        now: datetime,
    ) -> dict[str, Any]:
        """Buy the label for an order reserved at ``placed.site`` and tell the site (feed) and the
        merchant (``order.released``); the order row is the caller's. Returns the shipment row."""
        site = placed.site
        assert site is not None, "release needs a reserved site"
        conn = s.connection()
        oid, ship_to = order["id"], order["ship_to"]
        dest = ship_to["country"]
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
            reference=order["external_id"],
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
            service_level=order["service_level"],
            customs=customs,
            incoterm=order["incoterm"],
            sender_name=tenant.name,
        )
        label = self._buy(s, shipment, order["service_level"])
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
        body = c.OrderReleasedBody(
            order_id=oid,
            external_id=order["external_id"],
            tenant=tenant.id,
            service_level=order["service_level"],
            ship_to=c.ShipToSummary(name=ship_to.get("name", ""), city=ship_to.get("city", ""), country=dest),
            lines=[
                c.ReleasedLine(
                    sku=sku,
                    name=products[sku].name,
                    qty=qty,
                    gtins=products[sku].gtins,
                    lot_tracked=products[sku].lot_tracked,
                    bin=placed.stock[sku].bin if sku in placed.stock else None,
                )
                for sku, qty in lines
            ],
            label=c.LabelInfo(
                carrier=label.carrier, service=label.service, tracking_number=label.tracking_number, zpl=label.zpl
            ),
            expected_weight_g=weight_g,
        )
        feed.append(s, site=site.id, type_=c.ORDER_RELEASED, body=body, tenant=tenant.id)
        if tenant.webhook_url:
            webhooks.enqueue(
                s,
                tenant.id,
                "order.released",
                {
                    "order_id": oid,
                    "external_id": order["external_id"],
                    "status": "released",
                    "site": site.id,
                    "carrier": label.carrier,
                    "service": label.service,
                    "tracking_number": label.tracking_number,
                },
            )
        return ship_row

    # --- backorders -------------------------------------------------------------------------------
    def release_backorders(self, tenant: TenantContext, skus: Iterable[str] | None = None, limit: int = 200) -> list[str]:
        """Stock arrived (a receipt) or was freed (a cancel): release the tenant's backordered
        orders that can now ship, oldest first, each in its own transaction; an order that still
        cannot ship stays backordered. Returns the ids released."""
        query = sa.select(ORDERS.c.id).where(ORDERS.c.tenant == tenant.id, ORDERS.c.status == "backordered")
        if skus is not None:
            query = query.where(ORDERS.c.id.in_(sa.select(LINES.c.order_id).where(LINES.c.sku.in_(list(skus)))))
        with read_session(self.engine) as s:
            waiting = list(s.connection().execute(query.order_by(ORDERS.c.created_at, ORDERS.c.id).limit(limit)).scalars())
        released: list[str] = []
        for oid in waiting:
            try:
                with write_session(self.engine) as s:
                    if not self._release_backorder(s, tenant, oid):
                        raise _StillBackordered
                released.append(oid)
            except _StillBackordered:
                continue
            except CarrierUnavailable as e:  # it stays backordered (the next receipt retries) and
                log.warning("backorder %s not released: %s", oid, e)  # never blocks the ones after it
        if released:
            self._notify_feed()
        return released

    def _release_backorder(self, s: Session, tenant: TenantContext, oid: str) -> bool:
        conn = s.connection()
        now = utcnow()
        # claim it first: a concurrent release (or cancel) of the same order waits or finds nothing
        claimed = conn.execute(
            sa.update(ORDERS)
            .where(ORDERS.c.id == oid, ORDERS.c.tenant == tenant.id, ORDERS.c.status == "backordered")
            .values(updated_at=now)
            .returning(*ORDERS.c)
        ).first()
        if claimed is None:
            return False
        order = dict(claimed._mapping)
        lines = [
            (sku, int(qty))
            for sku, qty in conn.execute(
                sa.select(LINES.c.sku, LINES.c.qty).where(LINES.c.order_id == oid).order_by(LINES.c.line_no)
            )
        ]
        products = load_products(s, tenant.id, [sku for sku, _ in lines])
        if len(products) != len({sku for sku, _ in lines}):
            return False  # a product was deleted meanwhile: a person must look
        placed = self._route_and_reserve(s, tenant.id, oid, lines, order["ship_to"])
        if placed.site is None:
            return False
        if _customs_refusal(lines, products, order["ship_to"], [placed.site.country]) is not None:
            log.warning("backorder %s: customs data from %s is incomplete; it stays backordered", oid, placed.site.id)
            return False
        order.update(status="released", reason=None, site=placed.site.id)
        conn.execute(
            sa.update(ORDERS).where(ORDERS.c.id == oid).values(status="released", reason=None, site=placed.site.id)
        )
        self._release(s, tenant, order, lines, products, placed, now)
        return True

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
            raise NotFound(f"no order {echo(oid)}")
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
                raise NotFound(f"no order with external_id {echo(external_id)}")
            order, lines, shipment = self._load(s, tenant.id, oid)
        return order_view(order, lines, shipment)

    def label(self, tenant: TenantContext, oid: str) -> tuple[str, str]:
        """(tracking number, ZPL) of the order's current label; 404 if it has none (backordered, voided)."""
        with read_session(self.engine) as s:
            order, _lines, shipment = self._load(s, tenant.id, oid)
        if order["status"] == "cancelled" or shipment is None or shipment.get("voided_at") is not None:
            raise NotFound(f"order {echo(oid)} has no valid label (status {order['status']})")
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
        if changed.site is not None:  # its holds were voided: that stock may ship a backorder now
            self.release_backorders(tenant, [sku for sku, _qty in lines])
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
