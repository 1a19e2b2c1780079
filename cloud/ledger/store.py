"""The ledger's thin SQL adapter: the rules of :mod:`cloud.ledger.rules` as conditional statements.

Every function runs inside the caller's transaction (a :class:`sqlmodel.Session` from
:func:`cloud.db.write_session`) and never commits. Concurrency safety comes from the
statements themselves, identically on SQLite and PostgreSQL:

* reserve: ``UPDATE balances SET reserved = reserved + :q WHERE … AND on_hand - reserved >= :q``
  and the row count says whether it happened; a concurrent reserver waits for the row lock
  and then re-checks the condition against the committed row (PostgreSQL READ COMMITTED),
  or waits for the whole write lock (SQLite ``BEGIN IMMEDIATE``);
* post/void: ``UPDATE holds SET state = … WHERE id = :id AND state = 'pending'`` so a second
  post (or a post racing a void) changes nothing;
* movement ids are primary keys, inserted ``ON CONFLICT DO NOTHING``: the same id twice is a no-op.

Lines are reserved in sku order so two multi-line orders never lock rows in opposite orders.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import Session

from cloud.db import dialect_insert
from cloud.dbtypes import utcnow
from cloud.ids import stable_uuid
from cloud.ledger.rules import (
    Balance,
    BalanceKey,
    LedgerTotals,
    MovementIdReused,
    StockRuleError,
    invariant_violations,
)
from cloud.models import Balance as BalanceRow
from cloud.models import Hold, Movement, table

__all__ = [
    "HoldRef",
    "SiteStock",
    "StockLevel",
    "adjust",
    "availability",
    "check_invariants",
    "post_hold",
    "post_order",
    "receive",
    "reserve",
    "stock_levels",
    "void_hold",
    "void_order",
]

BALANCES = table(BalanceRow)
HOLDS = table(Hold)
MOVEMENTS = table(Movement)


@dataclass(frozen=True)
class HoldRef:
    id: uuid.UUID
    order_id: str
    tenant: str
    sku: str
    site: str
    qty: int


@dataclass(frozen=True)
class StockLevel:
    tenant: str
    sku: str
    site: str
    on_hand: int
    reserved: int
    bin: str | None

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True)
class SiteStock:
    available: int
    bin: str | None


def _conn(session: Session) -> Connection:
    return session.connection()


def _bal_key(tenant: str, sku: str, site: str) -> Any:
    return sa.and_(BALANCES.c.tenant == tenant, BALANCES.c.sku == sku, BALANCES.c.site == site)


def _insert_movement(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Insert movements, skipping ids that exist; returns how many were new."""
    if not rows:
        return 0
    now = utcnow()
    stmt = dialect_insert(conn, MOVEMENTS).on_conflict_do_nothing(index_elements=["id"]).returning(MOVEMENTS.c.id)
    count = 0
    for row in rows:  # one by one: RETURNING tells which ids were new
        values = {"hold_id": None, "order_id": None, "reason": None, "created_at": now, **row}
        count += len(conn.execute(stmt, values).all())
    return count


def _book_once(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert one movement given by its caller's id: True if new, False if exactly this movement
    was booked before, :class:`MovementIdReused` if the id was booked for something else."""
    if _insert_movement(conn, [row]):
        return True
    keys = ("tenant", "sku", "site", "kind", "qty")
    existing = conn.execute(
        sa.select(*(MOVEMENTS.c[k] for k in keys)).where(MOVEMENTS.c.id == row["id"])
    ).first()
    if existing is None or tuple(existing) != tuple(row[k] for k in keys):
        raise MovementIdReused(row["id"])
    return False


# --- receipts and adjustments ---------------------------------------------------------------
def receive(
    session: Session,
    *,
    tenant: str,
    sku: str,
    site: str,
    qty: int,
    movement_id: uuid.UUID,
    bin: str | None = None,
    reason: str | None = None,
) -> bool:
    """Book ``qty`` units in. False (and no change) when this receipt was booked before under
    ``movement_id``; :class:`MovementIdReused` when that id was booked for another movement."""
    if qty <= 0:
        raise StockRuleError(f"a receipt needs a positive quantity, got {qty}")
    conn = _conn(session)
    row = {"id": movement_id, "tenant": tenant, "sku": sku, "site": site, "kind": "receipt", "qty": qty}
    if not _book_once(conn, dict(row, reason=reason)):
        return False
    ins = dialect_insert(conn, BALANCES).values(tenant=tenant, sku=sku, site=site, on_hand=qty, reserved=0, bin=bin)
    conn.execute(
        ins.on_conflict_do_update(
            index_elements=["tenant", "sku", "site"],
            set_={
                "on_hand": BALANCES.c.on_hand + ins.excluded.on_hand,
                "bin": sa.func.coalesce(ins.excluded.bin, BALANCES.c.bin),
            },
        )
    )
    return True


def adjust(
    session: Session,
    *,
    tenant: str,
    sku: str,
    site: str,
    delta: int,
    movement_id: uuid.UUID,
    reason: str,
) -> bool:
    """A signed correction from the floor (found, damaged, counted). Refused with
    :class:`StockRuleError` when it would take on_hand below what is reserved."""
    if delta == 0:
        raise StockRuleError("an adjustment of 0 changes nothing")
    conn = _conn(session)
    row = {"id": movement_id, "tenant": tenant, "sku": sku, "site": site, "kind": "adjust", "qty": delta}
    if not _book_once(conn, dict(row, reason=reason)):
        return False
    if delta > 0:
        ins = dialect_insert(conn, BALANCES).values(tenant=tenant, sku=sku, site=site, on_hand=delta, reserved=0)
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=["tenant", "sku", "site"],
                set_={"on_hand": BALANCES.c.on_hand + ins.excluded.on_hand},
            )
        )
        return True
    result = conn.execute(
        sa.update(BALANCES)
        .where(_bal_key(tenant, sku, site), BALANCES.c.on_hand + delta >= BALANCES.c.reserved)
        .values(on_hand=BALANCES.c.on_hand + delta)
    )
    if result.rowcount != 1:
        raise StockRuleError(f"adjust {delta:+d} of {sku} at {site} would leave on_hand below reserved")
    return True


# --- two-phase reservations -------------------------------------------------------------------
def _merge(lines: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    total: dict[str, int] = defaultdict(int)
    for sku, qty in lines:
        if qty <= 0:
            raise StockRuleError(f"reserve {sku}: quantity must be positive, got {qty}")
        total[sku] += qty
    return sorted(total.items())


def reserve(
    session: Session, *, tenant: str, site: str, order_id: str, lines: Iterable[tuple[str, int]]
) -> list[HoldRef] | None:
    """Reserve every line at ``site`` or nothing: one pending hold per sku, or ``None`` (and no
    change) when any line is short. Safe under any concurrency (conditional UPDATE + row count)."""
    merged = _merge(lines)
    # a savepoint undoes earlier lines when a later one is short; one line needs none
    savepoint = session.begin_nested() if len(merged) > 1 else None
    conn = _conn(session)  # after begin_nested: this is what emits the SAVEPOINT
    for sku, qty in merged:
        result = conn.execute(
            sa.update(BALANCES)
            .where(_bal_key(tenant, sku, site), BALANCES.c.on_hand - BALANCES.c.reserved >= qty)
            .values(reserved=BALANCES.c.reserved + qty)
        )
        if result.rowcount != 1:
            if savepoint is not None:
                savepoint.rollback()
            return None
    if savepoint is not None:
        savepoint.commit()
    now = utcnow()
    holds = [HoldRef(uuid.uuid4(), order_id, tenant, sku, site, qty) for sku, qty in merged]
    conn.execute(
        sa.insert(HOLDS),
        [
            {
                "id": h.id,
                "order_id": order_id,
                "tenant": tenant,
                "sku": h.sku,
                "site": site,
                "qty": h.qty,
                "state": "pending",
                "created_at": now,
                "updated_at": now,
            }
            for h in holds
        ],
    )
    conn.execute(
        sa.insert(MOVEMENTS),
        [
            {
                "id": stable_uuid(str(h.id), "reserve"),
                "tenant": tenant,
                "sku": h.sku,
                "site": site,
                "kind": "reserve",
                "qty": h.qty,
                "hold_id": h.id,
                "order_id": order_id,
                "reason": None,
                "created_at": now,
            }
            for h in holds
        ],
    )
    return holds


def _settle(session: Session, where: Any, state: str) -> list[HoldRef]:
    """Move pending holds matching ``where`` to ``state`` (posted/voided) and book the movements."""
    conn = _conn(session)
    now = utcnow()
    rows = conn.execute(
        sa.update(HOLDS)
        .where(where, HOLDS.c.state == "pending")
        .values(state=state, updated_at=now)
        .returning(HOLDS.c.id, HOLDS.c.order_id, HOLDS.c.tenant, HOLDS.c.sku, HOLDS.c.site, HOLDS.c.qty)
    ).all()
    holds = sorted((HoldRef(*r) for r in rows), key=lambda h: (h.sku, h.site))
    kind = "post" if state == "posted" else "void"
    for h in holds:
        values: dict[str, Any] = {"reserved": BALANCES.c.reserved - h.qty}
        if kind == "post":
            values["on_hand"] = BALANCES.c.on_hand - h.qty
        result = conn.execute(sa.update(BALANCES).where(_bal_key(h.tenant, h.sku, h.site)).values(**values))
        if result.rowcount != 1:  # a pending hold always has its balance row: a bug, not a stock rule
            raise AssertionError(f"hold {h.id} has no balance row")
    _insert_movement(
        conn,
        [
            {
                "id": stable_uuid(str(h.id), kind),
                "tenant": h.tenant,
                "sku": h.sku,
                "site": h.site,
                "kind": kind,
                "qty": h.qty,
                "hold_id": h.id,
                "order_id": h.order_id,
            }
            for h in holds
        ],
    )
    return holds


def post_hold(session: Session, hold_id: uuid.UUID) -> bool:
    """Ship a pending hold: on_hand and reserved both fall. False if it was not pending."""
    return bool(_settle(session, HOLDS.c.id == hold_id, "posted"))


def void_hold(session: Session, hold_id: uuid.UUID) -> bool:
    """Release a pending hold: reserved falls. False if it was not pending."""
    return bool(_settle(session, HOLDS.c.id == hold_id, "voided"))


def post_order(session: Session, order_id: str) -> list[HoldRef]:
    """Post every pending hold of an order; returns those posted now."""
    return _settle(session, HOLDS.c.order_id == order_id, "posted")


def void_order(session: Session, order_id: str) -> list[HoldRef]:
    """Void every pending hold of an order; returns those voided now."""
    return _settle(session, HOLDS.c.order_id == order_id, "voided")


# --- reads -------------------------------------------------------------------------------------
def availability(session: Session, tenant: str, skus: Iterable[str]) -> dict[str, dict[str, SiteStock]]:
    """``{site: {sku: SiteStock}}`` for the given skus of a tenant, as of this transaction."""
    wanted = sorted(set(skus))
    out: dict[str, dict[str, SiteStock]] = defaultdict(dict)
    if not wanted:
        return {}
    rows = _conn(session).execute(
        sa.select(
            BALANCES.c.site, BALANCES.c.sku, BALANCES.c.on_hand - BALANCES.c.reserved, BALANCES.c.bin
        ).where(BALANCES.c.tenant == tenant, BALANCES.c.sku.in_(wanted))
    )
    for site, sku, available, bin_ in rows:
        out[site][sku] = SiteStock(int(available), bin_)
    return dict(out)


def stock_levels(
    session: Session, tenant: str, *, sku: str | None = None, site: str | None = None
) -> list[StockLevel]:
    q = sa.select(
        BALANCES.c.tenant, BALANCES.c.sku, BALANCES.c.site, BALANCES.c.on_hand, BALANCES.c.reserved, BALANCES.c.bin
    ).where(BALANCES.c.tenant == tenant)
    if sku is not None:
        q = q.where(BALANCES.c.sku == sku)
    if site is not None:
        q = q.where(BALANCES.c.site == site)
    q = q.order_by(BALANCES.c.sku, BALANCES.c.site)
    return [StockLevel(*r) for r in _conn(session).execute(q)]


def check_invariants(session: Session) -> list[str]:
    """Compare every cached balance with the rules and with its movements and holds;
    returns one sentence per violation (empty when the ledger is consistent)."""
    conn = _conn(session)
    balances: dict[BalanceKey, Balance] = {
        (t, s, site): Balance(on_hand, reserved)
        for t, s, site, on_hand, reserved in conn.execute(
            sa.select(BALANCES.c.tenant, BALANCES.c.sku, BALANCES.c.site, BALANCES.c.on_hand, BALANCES.c.reserved)
        )
    }
    sums: dict[BalanceKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for t, s, site, kind, total in conn.execute(
        sa.select(
            MOVEMENTS.c.tenant, MOVEMENTS.c.sku, MOVEMENTS.c.site, MOVEMENTS.c.kind, sa.func.sum(MOVEMENTS.c.qty)
        ).group_by(MOVEMENTS.c.tenant, MOVEMENTS.c.sku, MOVEMENTS.c.site, MOVEMENTS.c.kind)
    ):
        sums[(t, s, site)][kind] = int(total)
    for t, s, site, total in conn.execute(
        sa.select(HOLDS.c.tenant, HOLDS.c.sku, HOLDS.c.site, sa.func.sum(HOLDS.c.qty))
        .where(HOLDS.c.state == "pending")
        .group_by(HOLDS.c.tenant, HOLDS.c.sku, HOLDS.c.site)
    ):
        sums[(t, s, site)]["pending"] = int(total)
    totals = {
        key: LedgerTotals(
            receipts=v["receipt"],
            adjustments=v["adjust"],
            reserves=v["reserve"],
            posts=v["post"],
            voids=v["void"],
            pending_holds=v["pending"],
        )
        for key, v in sums.items()
    }
    return invariant_violations(balances, totals)
