"""Request models of the orders API (one element of ``orders.json`` per request)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from cloud.catalog import Sku, printed_text
from cloud.validation import MAX_FIELD_LEN

__all__ = ["INCOTERMS", "Incoterm", "CancelIn", "GiftIn", "OrderIn", "OrderLineIn", "ShipToIn", "request_hash"]

Incoterm = Literal["EXW", "FCA", "CPT", "CIP", "DAP", "DPU", "DDP", "FAS", "FOB", "CFR", "CIF"]  # Incoterms 2020
INCOTERMS: tuple[str, ...] = get_args(Incoterm)
# validate_ship_to refuses a field longer than this; the schema says so too
Text = Annotated[str, StringConstraints(max_length=MAX_FIELD_LEN)]


def _reference(value: str) -> str:
    """The merchant's own id is printed on the label, so it must print; it is kept as sent."""
    printed_text(value, "external_id")
    return value


class ShipToIn(BaseModel):
    """The destination. Field rules (required fields, postal code and phone by country) are checked by
    :func:`cloud.validation.validate_ship_to`, so every problem carries the same pointers and codes."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    company: Text | None = None
    street: Text | None = None
    postal_code: Text | None = None
    city: Text | None = None
    province: Text | None = None
    country_area: Text | None = None
    country: Text | None = None
    phone: Text | None = None
    email: Text | None = None


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: Sku
    qty: int = Field(gt=0, le=10_000, strict=True)  # "2" or true is a client bug, not 2 or 1


class GiftIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wrap: bool = False
    message: str | None = Field(default=None, max_length=500)


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, description="optional; must be the caller's tenant")
    external_id: Annotated[str, AfterValidator(_reference)] = Field(
        min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"
    )
    channel: str | None = Field(default=None, max_length=40)
    service_level: Literal["standard", "express"] = "standard"
    ship_to: ShipToIn
    lines: list[OrderLineIn] = Field(min_length=1, max_length=200)
    incoterm: Incoterm | None = None
    gift: GiftIn | None = None


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=400)


def request_hash(model: BaseModel) -> str:
    """A stable digest of a validated request (key order and formatting do not matter)."""
    canonical = json.dumps(model.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
