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
from cloud.models import FeedCounter, FeedRow, table
from sync.contract import Envelope, encode, new_envelope
from sync.link import FeedEntry

__all__ = ["append", "mark_published", "since", "unpublished"]

_FEED = table(FeedRow)
_COUNTERS = table(FeedCounter)


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


def since(session: Session, site: str, from_seq: int, limit: int) -> list[FeedEntry]:
    rows = session.connection().execute(
        sa.select(_FEED.c.site, _FEED.c.seq, _FEED.c.payload)
        .where(_FEED.c.site == site, _FEED.c.seq > from_seq)
        .order_by(_FEED.c.seq)
        .limit(limit)
    )
    return [FeedEntry(site, int(seq), bytes(payload)) for site, seq, payload in rows]


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
