"""The cloud's store for the sync link: :class:`SqlCloudStore` implements :class:`sync.link.CloudStore`.

Station events are applied exactly once: the envelope id is claimed in ``inbox``
(``INSERT … ON CONFLICT DO NOTHING``) in the same transaction as the effect. A second copy
finds the claim and answers ``duplicate``; two workers racing on one id serialise on the
claim (PostgreSQL waits for the first to commit, SQLite has one writer), and a unique
violation that still slips through rolls the loser back and answers ``duplicate`` too.

Rejections are permanent and recorded (inbox ``rejected`` + reason); a conflict such as a
parcel packed after the merchant cancelled also turns the order into ``exception`` for a
manager to resolve. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud import feed, ledger, webhooks
from cloud.db import dialect_insert, read_session, write_session
from cloud.dbtypes import utcnow
from cloud.models import DeadLetter, InboxRow, Order, OrderLine, StationPresence, Tenant, table
from cloud.models import Shipment as ShipmentRow
from sync import contract as c
from sync.contract import AckBody, ContractError, Envelope
from sync.link import FeedEntry

__all__ = ["SqlCloudStore"]

log = logging.getLogger("packline.ingest")

INBOX = table(InboxRow)
ORDERS = table(Order)
LINES = table(OrderLine)
SHIPMENTS = table(ShipmentRow)
TENANTS = table(Tenant)
DEAD = table(DeadLetter)
PRESENCE = table(StationPresence)

#: states in which a station may report an order packed
PACKABLE = ("released", "packing")


@dataclass(frozen=True)
class _Outcome:
    status: Literal["applied", "rejected"]
    reason: str | None = None


class _Duplicate(Exception):
    pass


class SqlCloudStore:
    """The cloud side of the sync contract, on the cloud database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- station events ------------------------------------------------------------------------
    def apply_station_event(self, env: Envelope) -> AckBody:
        try:
            with write_session(self.engine) as s:
                outcome = self._apply(s, env)
        except _Duplicate:
            return AckBody(event_id=env.id, status="duplicate")
        except sa.exc.IntegrityError:
            with read_session(self.engine) as s:
                seen = s.connection().execute(sa.select(INBOX.c.status).where(INBOX.c.event_id == env.id)).first()
            if seen is not None:  # another worker applied it first; our transaction rolled back
                return AckBody(event_id=env.id, status="duplicate")
            raise
        if outcome.status == "rejected":
            log.warning("rejected %s %s from %s: %s", env.type, env.id, env.station, outcome.reason)
        return AckBody(event_id=env.id, status=outcome.status, reason=outcome.reason)

    def _apply(self, s: Session, env: Envelope) -> _Outcome:
        conn = s.connection()
        claim = (
            dialect_insert(conn, INBOX)
            .values(event_id=env.id, station=env.station, type=env.type, status="applied", received_at=utcnow())
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(INBOX.c.event_id)
        )
        if conn.execute(claim).first() is None:
            raise _Duplicate
        if env.type == c.ORDER_PACKED:
            outcome = self._order_packed(s, env)
        else:
            outcome = _Outcome("rejected", f"unknown event type {env.type!r}")
        if outcome.status == "rejected":
            conn.execute(
                sa.update(INBOX).where(INBOX.c.event_id == env.id).values(status="rejected", reason=outcome.reason)
            )
        return outcome

    def _order_packed(self, s: Session, env: Envelope) -> _Outcome:
        try:
            body = c.parse_body(env, c.OrderPackedBody)
        except ContractError as e:
            return _Outcome("rejected", str(e))
        conn = s.connection()
        row = conn.execute(
            sa.select(ORDERS.c.id, ORDERS.c.tenant, ORDERS.c.status, ORDERS.c.site, ORDERS.c.external_id,
                      TENANTS.c.webhook_url)
            .join(TENANTS, TENANTS.c.id == ORDERS.c.tenant)
            .where(ORDERS.c.id == body.order_id)
            .with_for_update(of=ORDERS)  # PostgreSQL: a concurrent cancel waits (SQLite: one writer)
        ).first()
        if row is None or (env.tenant is not None and env.tenant != row.tenant):
            return _Outcome("rejected", f"unknown order {body.order_id!r}")
        if row.site is not None and env.site != row.site:
            return _Outcome("rejected", f"order {body.order_id} belongs to site {row.site}, not {env.site}")
        packed: dict[str, Any] = {
            "event_id": str(env.id),
            "station": env.station,
            "packer": body.packer,
            "weight_g": body.weight_g,
            "tracking_number": body.tracking_number,
            "lines": [line.model_dump(mode="json") for line in body.lines],
            "started_at": body.started_at.isoformat() if body.started_at else None,
            "packed_at": body.packed_at.isoformat(),
        }
        now = utcnow()
        if row.status == "exception":
            return _Outcome("rejected", f"order {row.id} is already an exception")
        problem: str | None
        if row.status in ("shipped", "delivered"):
            # a second parcel for one order (two stations of the site packed it): a manager must
            # intercept one of them, and stock left twice while the ledger posted once
            first = conn.execute(sa.select(ORDERS.c.packed).where(ORDERS.c.id == row.id)).scalar() or {}
            problem = (f"packed twice: at {env.station} (event {env.id}) after {first.get('station')} "
                       f"(event {first.get('event_id')}) had packed and shipped it")
        elif row.status not in PACKABLE:
            problem = f"packed at {env.station} while the order was {row.status}"
        else:
            problem = self._packed_mismatch(s, body)
        if problem is None:
            conn.execute(
                sa.update(ORDERS)
                .where(ORDERS.c.id == row.id)
                .values(status="shipped", shipped_at=now, updated_at=now, packed=packed, reason=None)
            )
            ledger.post_order(s, row.id)
            self._announce(s, row, "shipped", env, None)
            if row.webhook_url:
                webhooks.enqueue(
                    s,
                    row.tenant,
                    "order.shipped",
                    {
                        "order_id": row.id,
                        "external_id": row.external_id,
                        "status": "shipped",
                        "site": row.site,
                        "station": env.station,
                        "tracking_number": body.tracking_number,
                        "weight_g": body.weight_g,
                        "shipped_at": _iso(now),
                    },
                )
            return _Outcome("applied")
        # a conflict: the parcel exists but the cloud cannot ship it; a manager must resolve it
        values: dict[str, Any] = {"status": "exception", "reason": problem, "updated_at": now}
        if row.status not in ("shipped", "delivered"):  # keep the first packer's record on a double pack
            values["packed"] = packed
        conn.execute(sa.update(ORDERS).where(ORDERS.c.id == row.id).values(**values))
        self._announce(s, row, "exception", env, problem)
        if row.webhook_url:
            webhooks.enqueue(
                s,
                row.tenant,
                "order.exception",
                {"order_id": row.id, "external_id": row.external_id, "status": "exception", "reason": problem},
            )
        return _Outcome("rejected", problem)

    @staticmethod
    def _announce(s: Session, row: Any, status: str, env: Envelope, reason: str | None) -> None:
        """Tell every station of the site that the order closed, so no one else packs it."""
        if row.site is None:
            return
        body = c.OrderUpdatedBody(order_id=row.id, status=status, station=env.station, reason=reason)
        feed.append(s, site=row.site, type_=c.ORDER_UPDATED, body=body, tenant=row.tenant)

    def _packed_mismatch(self, s: Session, body: c.OrderPackedBody) -> str | None:
        """Why a packed report does not match the order, or ``None``."""
        conn = s.connection()
        ordered: Counter[str] = Counter()
        for sku, qty in conn.execute(sa.select(LINES.c.sku, LINES.c.qty).where(LINES.c.order_id == body.order_id)):
            ordered[sku] += int(qty)
        packed: Counter[str] = Counter()
        for line in body.lines:
            packed[line.sku] += line.qty
        if packed != ordered:
            return f"packed {dict(sorted(packed.items()))} but the order has {dict(sorted(ordered.items()))}"
        label = conn.execute(
            sa.select(SHIPMENTS.c.tracking_number)
            .where(SHIPMENTS.c.order_id == body.order_id, SHIPMENTS.c.voided_at.is_(None))
            .order_by(SHIPMENTS.c.id.desc())
            .limit(1)
        ).scalar()
        if label is not None and label != body.tracking_number:
            return f"parcel carries tracking number {body.tracking_number}, the order's label is {label}"
        return None

    # --- feed -------------------------------------------------------------------------------------
    def feed_since(self, site: str, from_seq: int, limit: int) -> list[FeedEntry]:
        with read_session(self.engine) as s:
            return feed.since(s, site, from_seq, limit)

    def unpublished_feed(self, limit: int) -> list[FeedEntry]:
        with read_session(self.engine) as s:
            return feed.unpublished(s, limit)

    def mark_feed_published(self, entries: Sequence[FeedEntry]) -> None:
        if not entries:
            return
        with write_session(self.engine) as s:
            feed.mark_published(s, entries)

    # --- dead letters and presence ----------------------------------------------------------------
    def record_dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        with write_session(self.engine) as s:
            s.connection().execute(
                sa.insert(DEAD).values(topic=topic, payload=bytes(payload), reason=reason, received_at=utcnow())
            )

    def record_presence(self, station: str, site: str, payload: dict[str, object]) -> None:
        def _int(key: str) -> int:
            value = payload.get(key, 0)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        values = {
            "station": station,
            "site": site,
            "online": bool(payload.get("online", False)),
            "outbox_depth": _int("outbox_depth"),
            "last_feed_seq": _int("last_feed_seq"),
            "updated_at": utcnow(),
        }
        with write_session(self.engine) as s:
            conn = s.connection()
            ins = dialect_insert(conn, PRESENCE).values(**values)
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=["station"], set_={k: ins.excluded[k] for k in values if k != "station"}
                )
            )


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
