"""Initial cloud schema: tenants, catalogue, ledger, orders, sync feed/inbox, webhooks.

Written out explicitly (first generated with autogenerate, then reviewed); never
generated at run time. Revision ID: 0001. Revises: nothing.
Create Date: 2026-12-03 19:25:26.809816
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.dbtypes import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # tracking serials: nextval never blocks and is never rolled back (see cloud.serials)
        op.execute(sa.schema.CreateSequence(sa.Sequence("carrier_serial_seq", start=1)))
    op.create_table(
        "carrier_serials",
        sa.Column("carrier", sa.String(), nullable=False),
        sa.Column("last_value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("carrier", name=op.f("pk_carrier_serials")),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_table(
        "feed",
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("envelope_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("site", "seq", name=op.f("pk_feed")),
        sa.UniqueConstraint("envelope_id", name=op.f("uq_feed_envelope_id")),
    )
    op.create_index(op.f("ix_feed_published"), "feed", ["published"])
    op.create_table(
        "feed_counters",
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("site", name=op.f("pk_feed_counters")),
    )
    op.create_table(
        "holds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("sku", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("state IN ('pending', 'posted', 'voided')", name=op.f("ck_holds_state")),
        sa.CheckConstraint("qty > 0", name=op.f("ck_holds_qty_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    op.create_index(op.f("ix_holds_order_id"), "holds", ["order_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response_json", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "inbox",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("station", sa.String(), nullable=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("status IN ('applied', 'rejected')", name=op.f("ck_inbox_status")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_inbox")),
    )
    op.create_table(
        "movements",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("sku", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("hold_id", sa.Uuid(), nullable=True),
        sa.Column("order_id", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('receipt', 'reserve', 'post', 'void', 'adjust')", name=op.f("ck_movements_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_movements")),
    )
    op.create_index(op.f("ix_movements_hold_id"), "movements", ["hold_id"])
    op.create_index(op.f("ix_movements_tenant_sku_site"), "movements", ["tenant", "sku", "site"])
    op.create_table(
        "sites",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("postal_code", sa.String(), nullable=False),
        sa.Column("city", sa.String(), nullable=False),
        sa.Column("street", sa.String(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("timezone", sa.String(), nullable=False),
        sa.Column("cutoffs", sa.JSON(), nullable=False),
        sa.Column("licences", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sites")),
    )
    op.create_table(
        "station_presence",
        sa.Column("station", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("outbox_depth", sa.Integer(), nullable=False),
        sa.Column("last_feed_seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("station", name=op.f("pk_station_presence")),
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("vat_id", sa.String(), nullable=True),
        sa.Column("webhook_url", sa.String(), nullable=True),
        sa.Column("webhook_secret", sa.String(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.id"], name=op.f("fk_api_keys_tenant_tenants")),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_tenant"), "api_keys", ["tenant"])
    op.create_table(
        "orders",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("external_id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=True),
        sa.Column("ship_to", sa.JSON(), nullable=False),
        sa.Column("service_level", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=True),
        sa.Column("incoterm", sa.String(), nullable=True),
        sa.Column("gift", sa.JSON(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("packed", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("shipped_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('received', 'on_hold', 'backordered', 'released', 'packing', 'packed', 'shipped', 'delivered', 'cancelled', 'exception')",
            name=op.f("ck_orders_status"),
        ),
        sa.ForeignKeyConstraint(["site"], ["sites.id"], name=op.f("fk_orders_site_sites")),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.id"], name=op.f("fk_orders_tenant_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("tenant", "external_id", name=op.f("uq_orders_tenant_external_id")),
    )
    op.create_table(
        "packers",
        sa.Column("badge", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("language", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["site"], ["sites.id"], name=op.f("fk_packers_site_sites")),
        sa.PrimaryKeyConstraint("badge", name=op.f("pk_packers")),
    )
    op.create_index(op.f("ix_packers_site"), "packers", ["site"])
    op.create_table(
        "products",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("gtins", sa.JSON(), nullable=False),
        sa.Column("weight_g", sa.Integer(), nullable=False),
        sa.Column("dims_mm", sa.JSON(), nullable=True),
        sa.Column("hs_code", sa.String(), nullable=True),
        sa.Column("origin", sa.String(length=2), nullable=True),
        sa.Column("value", sa.String(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("lot_tracked", sa.Boolean(), nullable=False),
        sa.Column("shelf_life_days", sa.Integer(), nullable=True),
        sa.Column("contains", sa.JSON(), nullable=True),
        sa.Column("kit", sa.JSON(), nullable=True),
        sa.Column("dangerous_goods", sa.String(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.id"], name=op.f("fk_products_tenant_tenants")),
        sa.PrimaryKeyConstraint("tenant", "sku", name=op.f("pk_products")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant"], ["tenants.id"], name=op.f("fk_webhook_deliveries_tenant_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(op.f("ix_webhook_deliveries_next_attempt_at"), "webhook_deliveries", ["next_attempt_at"])
    op.create_table(
        "balances",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("sku", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("bin", sa.String(), nullable=True),
        sa.CheckConstraint(
            "reserved >= 0 AND reserved <= on_hand", name=op.f("ck_balances_reserved_within_on_hand")
        ),
        sa.ForeignKeyConstraint(["site"], ["sites.id"], name=op.f("fk_balances_site_sites")),
        sa.ForeignKeyConstraint(
            ["tenant", "sku"],
            ["products.tenant", "products.sku"],
            name=op.f("fk_balances_tenant_sku_products"),
        ),
        sa.PrimaryKeyConstraint("tenant", "sku", "site", name=op.f("pk_balances")),
    )
    op.create_table(
        "order_lines",
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_order_lines_order_id_orders")),
        sa.PrimaryKeyConstraint("order_id", "line_no", name=op.f("pk_order_lines")),
    )
    op.create_table(
        "shipments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(), nullable=False),
        sa.Column("carrier", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("tracking_number", sa.String(), nullable=False),
        sa.Column("zpl", sa.Text(), nullable=False),
        sa.Column("weight_g", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("voided_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_shipments_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipments")),
        sa.UniqueConstraint("tracking_number", name=op.f("uq_shipments_tracking_number")),
    )
    op.create_index(op.f("ix_shipments_order_id"), "shipments", ["order_id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.schema.DropSequence(sa.Sequence("carrier_serial_seq")))
    op.drop_index(op.f("ix_shipments_order_id"), table_name="shipments")
    op.drop_table("shipments")
    op.drop_table("order_lines")
    op.drop_table("balances")
    op.drop_index(op.f("ix_webhook_deliveries_next_attempt_at"), table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("products")
    op.drop_index(op.f("ix_packers_site"), table_name="packers")
    op.drop_table("packers")
    op.drop_table("orders")
    op.drop_index(op.f("ix_api_keys_tenant"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
    op.drop_table("station_presence")
    op.drop_table("sites")
    op.drop_index(op.f("ix_movements_tenant_sku_site"), table_name="movements")
    op.drop_index(op.f("ix_movements_hold_id"), table_name="movements")
    op.drop_table("movements")
    op.drop_table("inbox")
    op.drop_table("idempotency_keys")
    op.drop_index(op.f("ix_holds_order_id"), table_name="holds")
    op.drop_table("holds")
    op.drop_table("feed_counters")
    op.drop_index(op.f("ix_feed_published"), table_name="feed")
    op.drop_table("feed")
    op.drop_table("dead_letters")
    op.drop_table("carrier_serials")
