"""The cloud's tables (SQLModel). The schema itself is created by the Alembic migrations in
``cloud/migrations``; ``tests/test_cloud_migrations.py`` proves the two agree.

The tables live in their own metadata (:data:`metadata`), not in ``SQLModel.metadata``, so
other packages' SQLModel tables can never leak into the cloud schema or its migrations.

Ledger tables (``movements``, ``holds``, ``balances``) follow TigerBeetle's shape:
movements and holds are facts that are never rewritten except for a hold's state,
balances are a cache of the movements guarded by a CHECK constraint.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from cloud.dbtypes import UTCDateTime, utcnow

__all__ = [
    "HOLD_STATES",
    "MOVEMENT_KINDS",
    "ORDER_STATUSES",
    "ApiKey",
    "Balance",
    "CarrierSerial",
    "CloudModel",
    "DeadLetter",
    "FeedCounter",
    "FeedRow",
    "Hold",
    "IdempotencyKey",
    "InboxRow",
    "Movement",
    "Order",
    "OrderLine",
    "Packer",
    "Product",
    "Shipment",
    "Site",
    "StationPresence",
    "Tenant",
    "WebhookDelivery",
    "carrier_serial_seq",
    "metadata",
    "table",
]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=NAMING)
_registry = registry(metadata=metadata)

MOVEMENT_KINDS = ("receipt", "reserve", "post", "void", "adjust")
HOLD_STATES = ("pending", "posted", "voided")
ORDER_STATUSES = (
    "received",
    "on_hold",
    "backordered",
    "released",
    "packing",
    "packed",
    "shipped",
    "delivered",
    "cancelled",
    "exception",
)

# Tracking serials on PostgreSQL: a sequence (nextval never blocks and is never rolled back,
# so serials are unique across processes). SQLite uses the ``carrier_serials`` row instead,
# inside the writer's transaction (SQLite has a single writer anyway).
carrier_serial_seq = sa.Sequence("carrier_serial_seq", metadata=metadata, start=1)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _ts(*, nullable: bool = False, index: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True, index=index)
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=index)


class CloudModel(SQLModel, registry=_registry):
    """Base of every cloud table."""


# --- tenants, sites, catalogue ---------------------------------------------------------
class Tenant(CloudModel, table=True):
    __tablename__ = "tenants"

    id: str = Field(primary_key=True, max_length=64)
    name: str
    country: str = Field(max_length=2)
    vat_id: str | None = None
    webhook_url: str | None = None
    webhook_secret: str = Field(description='"whsec_" + base64 of the signing key')
    created_at: datetime = _ts()


class ApiKey(CloudModel, table=True):
    """API keys, stored as SHA-256 hex digests only. A tenant may hold several (rotation)."""

    __tablename__ = "api_keys"

    key_hash: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(foreign_key="tenants.id", index=True)
    created_at: datetime = _ts()
    revoked_at: datetime | None = _ts(nullable=True)


class Site(CloudModel, table=True):
    __tablename__ = "sites"

    id: str = Field(primary_key=True, max_length=64)
    name: str
    country: str = Field(max_length=2)
    postal_code: str
    city: str
    street: str
    lat: float
    lon: float
    timezone: str
    cutoffs: dict[str, str] = Field(default_factory=dict, sa_type=sa.JSON)
    licences: list[str] = Field(default_factory=list, sa_type=sa.JSON)


class Packer(CloudModel, table=True):
    __tablename__ = "packers"

    badge: str = Field(primary_key=True, max_length=64)
    name: str
    site: str = Field(foreign_key="sites.id", index=True)
    language: str | None = None


class Product(CloudModel, table=True):
    __tablename__ = "products"

    tenant: str = Field(primary_key=True, foreign_key="tenants.id")
    sku: str = Field(primary_key=True, max_length=64)
    name: str
    gtins: list[str] = Field(default_factory=list, sa_type=sa.JSON, description="GTIN-14, zero padded")
    weight_g: int
    dims_mm: list[int] | None = Field(default=None, sa_type=sa.JSON)
    hs_code: str | None = None
    origin: str | None = Field(default=None, max_length=2)
    value: str | None = Field(default=None, description="a decimal, as text (no float rounding)")
    currency: str | None = Field(default=None, max_length=3)
    lot_tracked: bool = False
    shelf_life_days: int | None = None
    contains: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    kit: list[dict[str, Any]] | None = Field(default=None, sa_type=sa.JSON)
    dangerous_goods: str | None = None
    updated_at: datetime = _ts()


# --- ledger ------------------------------------------------------------------------------
class Movement(CloudModel, table=True):
    """One immutable stock movement. Its id makes applying it idempotent."""

    __tablename__ = "movements"
    __table_args__ = (
        sa.CheckConstraint(f"kind IN ({_in(MOVEMENT_KINDS)})", name="kind"),
        sa.Index(None, "tenant", "sku", "site"),
    )

    id: uuid.UUID = Field(primary_key=True)
    tenant: str
    sku: str
    site: str
    kind: str
    qty: int = Field(description="receipt/reserve/post/void: > 0; adjust: signed")
    hold_id: uuid.UUID | None = Field(default=None, index=True)
    order_id: str | None = None
    reason: str | None = None
    created_at: datetime = _ts()


class Balance(CloudModel, table=True):
    """Cached balance per (tenant, sku, site); ``available = on_hand - reserved``."""

    __tablename__ = "balances"
    __table_args__ = (
        sa.CheckConstraint("reserved >= 0 AND reserved <= on_hand", name="reserved_within_on_hand"),
        sa.ForeignKeyConstraint(["tenant", "sku"], ["products.tenant", "products.sku"]),
    )

    tenant: str = Field(primary_key=True)
    sku: str = Field(primary_key=True)
    site: str = Field(primary_key=True, foreign_key="sites.id")
    on_hand: int = 0
    reserved: int = 0
    bin: str | None = Field(default=None, description="pick location at the site")


class Hold(CloudModel, table=True):
    """A two-phase reservation: pending -> posted (shipped) or voided (released)."""

    __tablename__ = "holds"
    __table_args__ = (
        sa.CheckConstraint(f"state IN ({_in(HOLD_STATES)})", name="state"),
        sa.CheckConstraint("qty > 0", name="qty_positive"),
    )

    id: uuid.UUID = Field(primary_key=True)
    order_id: str = Field(index=True)
    tenant: str
    sku: str
    site: str
    qty: int
    state: str = "pending"
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


# --- orders -------------------------------------------------------------------------------
class Order(CloudModel, table=True):
    __tablename__ = "orders"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "external_id"),
        sa.CheckConstraint(f"status IN ({_in(ORDER_STATUSES)})", name="status"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant: str = Field(foreign_key="tenants.id")
    external_id: str
    status: str
    site: str | None = Field(default=None, foreign_key="sites.id")
    ship_to: dict[str, Any] = Field(sa_type=sa.JSON)
    service_level: str = "standard"
    channel: str | None = None
    incoterm: str | None = None
    gift: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    reason: str | None = None
    packed: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON, description="what the station reported")
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    shipped_at: datetime | None = _ts(nullable=True)


class OrderLine(CloudModel, table=True):
    __tablename__ = "order_lines"

    order_id: str = Field(primary_key=True, foreign_key="orders.id")
    line_no: int = Field(primary_key=True)
    sku: str
    qty: int


class Shipment(CloudModel, table=True):
    __tablename__ = "shipments"

    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(foreign_key="orders.id", index=True)
    carrier: str
    service: str
    tracking_number: str = Field(unique=True)
    zpl: str = Field(sa_type=sa.Text)
    weight_g: int | None = None
    created_at: datetime = _ts()
    voided_at: datetime | None = _ts(nullable=True)


class IdempotencyKey(CloudModel, table=True):
    __tablename__ = "idempotency_keys"

    tenant: str = Field(primary_key=True)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    status_code: int
    response_json: str = Field(sa_type=sa.Text)
    created_at: datetime = _ts()


# --- sync ----------------------------------------------------------------------------------
class FeedRow(CloudModel, table=True):
    """The per-site feed: envelopes for stations, ``seq`` gap-free per site."""

    __tablename__ = "feed"

    site: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    envelope_id: uuid.UUID = Field(unique=True)
    type: str
    payload: bytes = Field(sa_type=sa.LargeBinary, description="the exact bytes that go on the wire")
    published: bool = Field(default=False, index=True)
    created_at: datetime = _ts()


class FeedCounter(CloudModel, table=True):
    __tablename__ = "feed_counters"

    site: str = Field(primary_key=True)
    last_seq: int = 0


class InboxRow(CloudModel, table=True):
    """Every station event applied (or rejected) once, by envelope id."""

    __tablename__ = "inbox"
    __table_args__ = (sa.CheckConstraint("status IN ('applied', 'rejected')", name="status"),)

    event_id: uuid.UUID = Field(primary_key=True)
    station: str | None = None
    type: str
    status: str
    reason: str | None = None
    received_at: datetime = _ts()


class DeadLetter(CloudModel, table=True):
    __tablename__ = "dead_letters"

    id: int | None = Field(default=None, primary_key=True)
    topic: str
    payload: bytes = Field(sa_type=sa.LargeBinary)
    reason: str = Field(sa_type=sa.Text)
    received_at: datetime = _ts()


class StationPresence(CloudModel, table=True):
    __tablename__ = "station_presence"

    station: str = Field(primary_key=True)
    site: str
    online: bool
    outbox_depth: int = 0
    last_feed_seq: int = 0
    updated_at: datetime = _ts()


class WebhookDelivery(CloudModel, table=True):
    """One webhook message; ``id`` is the ``webhook-id`` header on every attempt."""

    __tablename__ = "webhook_deliveries"

    id: str = Field(primary_key=True, max_length=40)
    tenant: str = Field(foreign_key="tenants.id")
    event_type: str
    payload: str = Field(sa_type=sa.Text, description="the JSON body, fixed at enqueue time")
    attempts: int = 0
    next_attempt_at: datetime | None = _ts(nullable=True, index=True)
    delivered_at: datetime | None = _ts(nullable=True)
    last_status: int | None = None
    last_error: str | None = None
    created_at: datetime = _ts()


class CarrierSerial(CloudModel, table=True):
    """Tracking-serial counter per carrier (SQLite; PostgreSQL uses ``carrier_serial_seq``)."""

    __tablename__ = "carrier_serials"

    carrier: str = Field(primary_key=True)
    last_value: int = 0


def table(model: type[CloudModel]) -> sa.Table:
    """The Core table behind a model, for lean conditional updates and bulk inserts."""
    t = getattr(model, "__table__", None)
    if not isinstance(t, sa.Table):
        raise TypeError(f"{model.__name__} is not a table model")
    return t
