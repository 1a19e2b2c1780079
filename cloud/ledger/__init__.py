"""The inventory ledger: immutable movements, two-phase holds, derived balances.

Pure rules in :mod:`cloud.ledger.rules`; the SQL adapter in :mod:`cloud.ledger.store`.

Kits and cases are deliberately simple for now: a case SKU (``contains``) and a kit SKU
(``kit``) are stock items of their own; nothing explodes a kit into components or breaks
a case into units yet.
"""

from cloud.ledger.rules import (
    Balance,
    LedgerTotals,
    MovementIdReused,
    StockRuleError,
    apply_movement,
    invariant_violations,
)
from cloud.ledger.store import (
    HoldRef,
    SiteStock,
    StockLevel,
    adjust,
    availability,
    check_invariants,
    post_hold,
    post_order,
    receive,
    reserve,
    stock_levels,
    void_hold,
    void_order,
)

__all__ = [
    "Balance",
    "HoldRef",
    "LedgerTotals",
    "MovementIdReused",
    "SiteStock",
    "StockLevel",
    "StockRuleError",
    "adjust",
    "apply_movement",
    "availability",
    "check_invariants",
    "invariant_violations",
    "post_hold",
    "post_order",
    "receive",
    "reserve",
    "stock_levels",
    "void_hold",
    "void_order",
]
