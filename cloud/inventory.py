"""Inventory as the API sees it: receipts in, stock levels out (the rules live in :mod:`cloud.ledger`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from cloud import ledger
from cloud.catalog import Sku
from cloud.db import read_session, write_session
from cloud.errors import Conflict, FieldProblem, InvalidRequest
from cloud.models import Product, Site, table

__all__ = ["ReceiptIn", "ReceiptResult", "level_dict", "list_stock", "receive_stock"]

_PRODUCTS = table(Product)
_SITES = table(Site)


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Sku
    site: str = Field(min_length=1, max_length=64)
    qty: int = Field(gt=0, le=1_000_000, strict=True)
    movement_id: uuid.UUID | None = Field(
        default=None, description="makes the receipt idempotent: the same id twice books it once"
    )
    bin: str | None = Field(default=None, max_length=40)


@dataclass(frozen=True)
class ReceiptResult:
    movement_id: uuid.UUID
    applied: bool
    level: ledger.StockLevel


def level_dict(lv: ledger.StockLevel) -> dict[str, Any]:
    return {
        "sku": lv.sku,
        "site": lv.site,
        "on_hand": lv.on_hand,
        "reserved": lv.reserved,
        "available": lv.available,
        "bin": lv.bin,
    }


def receive_stock(engine: Engine, tenant: str, receipt: ReceiptIn) -> ReceiptResult:
    """Book a receipt; a repeat of the same receipt under its ``movement_id`` changes nothing
    (``applied`` is False); the id reused for a different receipt is a :class:`Conflict`."""
    movement_id = receipt.movement_id or uuid.uuid4()
    with write_session(engine) as s:
        conn = s.connection()
        problems: list[FieldProblem] = []
        if conn.execute(
            sa.select(sa.literal(1)).where(_PRODUCTS.c.tenant == tenant, _PRODUCTS.c.sku == receipt.sku)
        ).first() is None:
            problems.append(FieldProblem("/sku", "unknown_sku", f"no product {receipt.sku!r}"))
        if conn.execute(sa.select(sa.literal(1)).where(_SITES.c.id == receipt.site)).first() is None:
            problems.append(FieldProblem("/site", "unknown_site", f"no site {receipt.site!r}"))
        if problems:
            raise InvalidRequest("the receipt is not valid", errors=problems)
        try:
            applied = ledger.receive(
                s, tenant=tenant, sku=receipt.sku, site=receipt.site, qty=receipt.qty, movement_id=movement_id,
                bin=receipt.bin, reason="receipt",
            )
        except ledger.MovementIdReused:
            # whose movement it was is not said: the id may be another tenant's
            raise Conflict(
                "movement_id was already used for a different movement; a retry must repeat the "
                "same sku, site and qty, a new receipt needs a new id",
                errors=[FieldProblem("/movement_id", "movement_id_reused", "already used for a different movement")],
            ) from None
        (level,) = ledger.stock_levels(s, tenant, sku=receipt.sku, site=receipt.site)
    return ReceiptResult(movement_id, applied, level)


def list_stock(engine: Engine, tenant: str, *, sku: str | None = None, site: str | None = None) -> list[dict[str, Any]]:
    with read_session(engine) as s:
        return [level_dict(lv) for lv in ledger.stock_levels(s, tenant, sku=sku, site=site)]
