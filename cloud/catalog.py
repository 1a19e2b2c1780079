"""The product master: one row per (tenant, sku), GTINs normalised to GTIN-14.

A product is upserted whole (``POST /v1/products`` and the sample-data loader share
:class:`ProductIn` and :func:`upsert_product`). Cases (``contains``) and kits (``kit``) are
recorded as given; the ledger treats every SKU as its own stock item. A GTIN identifies one SKU
of a tenant: the API refuses a GTIN another SKU already has (a scan must name one product).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo
from pydantic_core import PydanticCustomError
from sqlalchemy.engine import Engine
from sqlmodel import Session
from stdnum import ean
from stdnum.exceptions import ValidationError as StdnumValidationError

from cloud.db import dialect_insert, is_sqlite, write_session
from cloud.dbtypes import utcnow
from cloud.errors import Conflict, FieldProblem, InvalidRequest
from cloud.models import Product, Tenant, table
from cloud.validation import MAX_FIELD_LEN, check_text, echo, valid_country, valid_currency

__all__ = [
    "ContainsIn",
    "KitItemIn",
    "ProductIn",
    "Sku",
    "gtin_conflicts",
    "load_products",
    "normalise_gtin",
    "printed_text",
    "product_dict",
    "save_product",
    "upsert_product",
]

_PRODUCTS = table(Product)
_TENANTS = table(Tenant)

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")]


def printed_text(value: str, field: str) -> str:
    """:func:`cloud.validation.check_text` for a pydantic model: the normalised text, or a validation
    error (``control_character``, ``too_long``, ``blank``) for text that cannot be printed."""
    text, problem = check_text(value, field)
    if problem is not None:
        raise PydanticCustomError(problem[0], problem[1])
    if not text:
        raise PydanticCustomError("blank", f"{field} has no visible characters")
    return text


def _printed_text(value: str, info: ValidationInfo) -> str:
    # a product name is printed (customs block, packing screen): the ship_to text rules apply
    return printed_text(value, info.field_name or "the text")


def _country(code: str) -> str:
    if not valid_country(code):
        raise PydanticCustomError("invalid_country", f"{echo(code)} is not an ISO 3166-1 alpha-2 country code")
    return code


def _currency(code: str) -> str:
    if not valid_currency(code):
        raise PydanticCustomError("invalid_currency", f"{echo(code)} is not an ISO 4217 currency code")
    return code


PrintedText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_FIELD_LEN), AfterValidator(_printed_text)]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$"), AfterValidator(_country)]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$"), AfterValidator(_currency)]


def normalise_gtin(value: str) -> str:
    """Check a GTIN-8/12/13/14 (digits and check digit) and return it as GTIN-14, zero padded."""
    if not isinstance(value, str):
        raise ValueError("a GTIN is a string of digits")
    try:
        compact = str(ean.validate(value.strip()))
    except StdnumValidationError as e:
        raise ValueError(f"{value!r} is not a valid GTIN: {e}") from None
    return compact.zfill(14)


Gtin = Annotated[str, AfterValidator(normalise_gtin)]


class ContainsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Sku
    qty: int = Field(gt=0, le=1_000_000)


class KitItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Sku
    qty: int = Field(gt=0, le=1_000_000)


class ProductIn(BaseModel):
    """One element of ``products.json`` / the body of ``POST /v1/products``."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, description="optional; must be the caller's tenant")
    sku: Sku
    name: PrintedText
    gtins: list[Gtin] = Field(default_factory=list, max_length=20)
    weight_g: int = Field(gt=0, le=1_000_000)  # 1 t
    dims_mm: list[Annotated[int, Field(gt=0, le=10_000)]] | None = Field(default=None, min_length=3, max_length=3)
    hs_code: Annotated[str, StringConstraints(pattern=r"^\d{6,10}$")] | None = None
    origin: CountryCode | None = None
    value: Decimal | None = Field(default=None, ge=0, max_digits=14, decimal_places=4)
    currency: CurrencyCode | None = None
    lot_tracked: bool = False
    shelf_life_days: int | None = Field(default=None, gt=0, le=36_500)  # 100 years
    contains: ContainsIn | None = None
    kit: list[KitItemIn] | None = None
    dangerous_goods: Annotated[str, StringConstraints(pattern=r"^UN\d{4}$")] | None = None


def upsert_product(session: Session, tenant: str, product: ProductIn) -> bool:
    """Insert or replace ``product`` for ``tenant``; True when it was new."""
    values: dict[str, Any] = {
        "tenant": tenant,
        "sku": product.sku,
        "name": product.name,
        "gtins": list(dict.fromkeys(product.gtins)),
        "weight_g": product.weight_g,
        "dims_mm": product.dims_mm,
        "hs_code": product.hs_code,
        "origin": product.origin,
        "value": None if product.value is None else str(product.value),
        "currency": product.currency,
        "lot_tracked": product.lot_tracked,
        "shelf_life_days": product.shelf_life_days,
        "contains": product.contains.model_dump() if product.contains else None,
        "kit": [k.model_dump() for k in product.kit] if product.kit is not None else None,
        "dangerous_goods": product.dangerous_goods,
        "updated_at": utcnow(),
    }
    conn = session.connection()
    existed = conn.execute(
        sa.select(sa.literal(1)).where(_PRODUCTS.c.tenant == tenant, _PRODUCTS.c.sku == product.sku)
    ).first()
    ins = dialect_insert(conn, _PRODUCTS).values(**values)
    conn.execute(
        ins.on_conflict_do_update(
            index_elements=["tenant", "sku"],
            set_={k: ins.excluded[k] for k in values if k not in ("tenant", "sku")},
        )
    )
    return existed is None


def gtin_conflicts(session: Session, tenant: str, sku: str, gtins: list[str]) -> dict[str, str]:
    """The GTINs of ``gtins`` that another SKU of ``tenant`` already has: ``{gtin: that sku}``."""
    if not gtins:
        return {}
    conn = session.connection()
    # products.gtins is a JSON array: unnest it where it is stored (SQLite json_each, PostgreSQL
    # json_array_elements_text) instead of reading the tenant's whole catalogue
    elements = (sa.func.json_each if is_sqlite(conn) else sa.func.json_array_elements_text)(_PRODUCTS.c.gtins)
    gtin = elements.table_valued("value").alias("gtin")
    rows = conn.execute(
        sa.select(gtin.c.value, _PRODUCTS.c.sku)
        .select_from(_PRODUCTS.join(gtin, sa.true()))
        .where(_PRODUCTS.c.tenant == tenant, _PRODUCTS.c.sku != sku, gtin.c.value.in_(sorted(set(gtins))))
        .order_by(_PRODUCTS.c.sku)
    )
    found: dict[str, str] = {}
    for value, other in rows:
        found.setdefault(str(value), other)
    return found


def load_products(session: Session, tenant: str, skus: list[str]) -> dict[str, Product]:
    rows = session.connection().execute(
        sa.select(_PRODUCTS).where(_PRODUCTS.c.tenant == tenant, _PRODUCTS.c.sku.in_(sorted(set(skus))))
    )
    return {r.sku: Product.model_validate(dict(r._mapping)) for r in rows}


def product_dict(p: Product) -> dict[str, Any]:
    """The API shape of a stored product."""
    out = p.model_dump(mode="json", exclude={"updated_at"})
    for key in ("contains", "kit", "dims_mm", "hs_code", "origin", "value", "currency", "dangerous_goods",
                "shelf_life_days"):
        if out.get(key) is None:
            out.pop(key, None)
    out["updated_at"] = p.updated_at.isoformat()
    return out


def save_product(engine: Engine, tenant: str, product: ProductIn) -> tuple[bool, dict[str, Any]]:
    """The API's product upsert: refuses a body naming another tenant; returns (created, product)."""
    if product.tenant is not None and product.tenant != tenant:
        raise InvalidRequest(
            "the product names another tenant",
            errors=[FieldProblem("/tenant", "tenant_mismatch", f"must be {tenant!r} (the caller) or absent")],
        )
    with write_session(engine) as s:
        # one catalogue writer per tenant at a time (PostgreSQL; SQLite writers are serial anyway), so
        # two SKUs cannot take the same GTIN concurrently
        s.connection().execute(sa.select(_TENANTS.c.id).where(_TENANTS.c.id == tenant).with_for_update())
        taken = gtin_conflicts(s, tenant, product.sku, product.gtins)
        if taken:
            raise Conflict(
                "a GTIN belongs to another SKU; a scan at the packing station must name one product",
                errors=[
                    FieldProblem(f"/gtins/{i}", "gtin_in_use", f"{gtin} is the GTIN of SKU {taken[gtin]!r}")
                    for i, gtin in enumerate(product.gtins)
                    if gtin in taken
                ],
            )
        created = upsert_product(s, tenant, product)
        stored = load_products(s, tenant, [product.sku])[product.sku]
    return created, product_dict(stored)
