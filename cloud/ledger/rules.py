"""Ledger rules as plain functions over small frozen values (no I/O).

Every stock change is a movement; a balance per (tenant, sku, site) is derived from them:

* ``receipt q``  on_hand += q
* ``adjust d``   on_hand += d            (signed; may not take on_hand below reserved)
* ``reserve q``  reserved += q           (only while available = on_hand - reserved >= q)
* ``post q``     on_hand -= q, reserved -= q   (a pending hold ships)
* ``void q``     reserved -= q           (a pending hold is released)

The invariant is ``0 <= reserved <= on_hand``. The SQL adapter (:mod:`cloud.ledger.store`)
encodes exactly these rules as conditional UPDATEs so they hold under concurrency.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "Balance",
    "BalanceKey",
    "LedgerTotals",
    "MovementIdReused",
    "StockRuleError",
    "apply_movement",
    "invariant_violations",
]

BalanceKey = tuple[str, str, str]  # (tenant, sku, site)


class StockRuleError(ValueError):
    """A movement that the rules refuse (not enough available, non-positive quantity, ...)."""


class MovementIdReused(StockRuleError):
    """A movement id that was already booked for a different movement (another sku, site,
    quantity, kind or tenant): a client bug, never a repeat to be answered "already applied"."""

    def __init__(self, movement_id: object) -> None:
        super().__init__(f"movement id {movement_id} was already used for a different movement")
        self.movement_id = movement_id


@dataclass(frozen=True)
class Balance:
    on_hand: int = 0
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


def apply_movement(balance: Balance, kind: str, qty: int) -> Balance:
    """The balance after one movement, or :class:`StockRuleError`."""
    if kind != "adjust" and qty <= 0:
        raise StockRuleError(f"{kind} needs a positive quantity, got {qty}")
    if kind == "receipt":
        return Balance(balance.on_hand + qty, balance.reserved)
    if kind == "adjust":
        if balance.on_hand + qty < balance.reserved:
            raise StockRuleError(f"adjust {qty:+d} would leave on_hand below reserved ({balance.reserved})")
        return Balance(balance.on_hand + qty, balance.reserved)
    if kind == "reserve":
        if balance.available < qty:
            raise StockRuleError(f"reserve {qty}: only {balance.available} available")
        return Balance(balance.on_hand, balance.reserved + qty)
    if kind in ("post", "void"):
        if balance.reserved < qty:
            raise StockRuleError(f"{kind} {qty}: only {balance.reserved} reserved")
        on_hand = balance.on_hand - qty if kind == "post" else balance.on_hand
        return Balance(on_hand, balance.reserved - qty)
    raise StockRuleError(f"unknown movement kind {kind!r}")


@dataclass(frozen=True)
class LedgerTotals:
    """What the movements and holds of one key add up to."""

    receipts: int = 0
    adjustments: int = 0
    reserves: int = 0
    posts: int = 0
    voids: int = 0
    pending_holds: int = 0

    @property
    def on_hand(self) -> int:
        return self.receipts + self.adjustments - self.posts

    @property
    def reserved(self) -> int:
        return self.reserves - self.posts - self.voids


def invariant_violations(
    balances: Mapping[BalanceKey, Balance], totals: Mapping[BalanceKey, LedgerTotals]
) -> list[str]:
    """Every way the cached balances disagree with the rules or with the movements and holds."""
    out: list[str] = []
    keys: Iterable[BalanceKey] = sorted(set(balances) | set(totals))
    for key in keys:
        name = "/".join(key)
        b = balances.get(key, Balance())
        t = totals.get(key, LedgerTotals())
        if b.reserved < 0:
            out.append(f"{name}: reserved {b.reserved} < 0")
        if b.reserved > b.on_hand:
            out.append(f"{name}: reserved {b.reserved} > on_hand {b.on_hand}")
        if b.on_hand != t.on_hand:
            out.append(
                f"{name}: on_hand {b.on_hand} != receipts {t.receipts} + adjustments {t.adjustments}"
                f" - posted {t.posts} = {t.on_hand}"
            )
        if b.reserved != t.pending_holds:
            out.append(f"{name}: reserved {b.reserved} != pending holds {t.pending_holds}")
        if t.reserved != t.pending_holds:
            out.append(
                f"{name}: reserve movements {t.reserves} - posted {t.posts} - voided {t.voids}"
                f" != pending holds {t.pending_holds}"
            )
    return out
