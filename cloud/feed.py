"""The per-site feed: what stations of a site must apply, in ``seq`` order, gap-free.

:func:`append` runs in the caller's transaction: the counter row ``feed_counters(site)`` is
incremented and the envelope stored together with the business change, so a feed entry exists
if and only if its change was committed, and ``seq`` follows commit order per site (the counter
row is locked until commit). Publishing happens after commit (``on_feed`` / the MQTT link).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import Session

from cloud.db import dialect_insert
from cloud.models import FeedCounter, FeedRow, Order, table
from sync.contract import (
    FEED_SKIP,
    ORDER_CANCELLED,
    ORDER_RELEASED,
    ORDER_UPDATED,
    Envelope,
    FeedSkipBody,
    decode,
    encode,
    new_envelope,
)
from sync.link import FeedEntry

__all__ = ["append", "mark_published", "since", "unpublished"]

_FEED = table(FeedRow)
_COUNTERS = table(FeedCounter)
_ORDERS = table(Order)


def _next_seq(session: Session, site: str) -> int:
    conn = session.connection()
    ins = dialect_insert(conn, _COUNTERS).values(site=site, last_seq=1)
    stmt = ins.on_conflict_do_update(
        index_elements=["site"], set_={"last_seq": _COUNTERS.c.last_seq + 1}
    ).returning(_COUNTERS.c.last_seq)
    return int(conn.execute(stmt).scalar_one())


def append(
    session: Session, *, site: str, type_: str, body: BaseModel | dict[str, Any], tenant: str | None
) -> Envelope:
    """Add one envelope to ``site``'s feed with the next seq; returns it."""
    seq = _next_seq(session, site)
    env = new_envelope(type_, site=site, seq=seq, body=body, tenant=tenant)
    session.connection().execute(
        sa.insert(_FEED).values(
            site=site, seq=seq, envelope_id=env.id, type=type_, payload=encode(env), published=False,
            created_at=env.occurred_at,
        )
    )
    return env


_OPEN_FOR_STATIONS = ("released", "packing")
_ABOUT_ORDERS = (ORDER_RELEASED, ORDER_CANCELLED, ORDER_UPDATED)


def since(session: Session, site: str, from_seq: int, limit: int) -> list[FeedEntry]:
    """Feed entries after ``from_seq`` for a replay. Compacted: an entry about an order that has
    closed meanwhile (shipped, cancelled, exception ...) is replaced by a ``feed.skip`` with the
    same seq, so a station that was away — or is new — does not pack yesterday's orders again,
    and still sees a gap-free sequence."""
    conn = session.connection()
    rows = conn.execute(
        sa.select(_FEED.c.site, _FEED.c.seq, _FEED.c.payload)
        .where(_FEED.c.site == site, _FEED.c.seq > from_seq)
        .order_by(_FEED.c.seq)
        .limit(limit)
    ).all()
    envs = [decode(bytes(payload)) for _site, _seq, payload in rows]
    order_ids = {str(e.body.get("order_id")) for e in envs if e.type in _ABOUT_ORDERS}
    status: dict[str, str] = {}
    if order_ids:
        status = dict(conn.execute(sa.select(_ORDERS.c.id, _ORDERS.c.status).where(_ORDERS.c.id.in_(order_ids))).all())
    # a cancel or update is only news to a station that has the release: skip it only with its release
    released_here = {str(e.body.get("order_id")) for e in envs if e.type == ORDER_RELEASED}
    out = []
    for (_site, seq, payload), env in zip(rows, envs, strict=True):
        order_id = str(env.body.get("order_id"))
        state = status.get(order_id)
        closed = state is not None and state not in _OPEN_FOR_STATIONS
        if closed and (env.type == ORDER_RELEASED or (env.type in _ABOUT_ORDERS and order_id in released_here)):
            skip = FeedSkipBody(order_id=order_id, replaces=env.type, reason=f"order is {state}")
            payload = encode(new_envelope(FEED_SKIP, site=site, seq=int(seq), body=skip, tenant=env.tenant,
                                          id_=env.id, occurred_at=env.occurred_at))
        out.append(FeedEntry(site, int(seq), bytes(payload)))
    return out


def unpublished(session: Session, limit: int) -> list[FeedEntry]:
    rows = session.connection().execute(
        sa.select(_FEED.c.site, _FEED.c.seq, _FEED.c.payload)
        .where(_FEED.c.published.is_(False))
        .order_by(_FEED.c.site, _FEED.c.seq)
        .limit(limit)
    )
    return [FeedEntry(site, int(seq), bytes(payload)) for site, seq, payload in rows]


def mark_published(session: Session, entries: Sequence[FeedEntry]) -> None:
    by_site: dict[str, list[int]] = {}
    for e in entries:
        by_site.setdefault(e.site, []).append(e.seq)
    conn = session.connection()
    for site, seqs in by_site.items():
        conn.execute(sa.update(_FEED).where(_FEED.c.site == site, _FEED.c.seq.in_(seqs)).values(published=True))
