"""The carrier protocol and the value types every carrier adapter speaks.

A carrier adapter is a small plugin: ``rates(shipment)``, ``buy(shipment, service)`` -> :class:`Label`,
``void(label)``, ``track(tracking_number)``. Adapters raise :class:`CarrierError` for expected operating
failures (carrier down, timeout, a shipment it cannot carry); anything else is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "SERVICE_LEVELS",
    "Address",
    "Carrier",
    "CarrierError",
    "CustomsItem",
    "Label",
    "Rate",
    "ServiceLevel",
    "Shipment",
]

ServiceLevel = Literal["standard", "express"]
SERVICE_LEVELS: tuple[ServiceLevel, ...] = ("standard", "express")


@dataclass(frozen=True)
class Address:
    name: str
    street: str
    postal_code: str
    city: str
    country: str  # ISO 3166-1 alpha-2, upper case
    company: str | None = None
    phone: str | None = None  # E.164 once validated
    email: str | None = None


@dataclass(frozen=True)
class CustomsItem:
    """One line of a CN22/CN23 customs declaration."""

    sku: str
    description: str
    qty: int
    hs_code: str  # 6-10 digits
    origin: str  # ISO alpha-2 country of origin
    unit_value: Decimal
    currency: str  # ISO 4217
    weight_g: int  # per unit

    @property
    def value(self) -> Decimal:
        return self.unit_value * self.qty


@dataclass(frozen=True)
class Shipment:
    reference: str  # the order's external id
    ship_from: Address
    ship_to: Address
    weight_g: int
    service_level: str  # "standard" | "express"
    customs: tuple[CustomsItem, ...] = ()
    incoterm: str | None = None  # e.g. "DAP", "DDP"
    sender_name: str = ""  # the merchant shown as sender, if not the site itself


@dataclass(frozen=True)
class Rate:
    carrier: str
    service: str
    amount: Decimal
    currency: str
    transit_days: int


@dataclass(frozen=True)
class Label:
    carrier: str
    service: str
    tracking_number: str
    zpl: str  # exactly one ^XA..^XZ label, UTF-8 (^CI28)


class CarrierError(Exception):
    """An expected operating failure of a carrier (down, timed out, refused the shipment)."""


@runtime_checkable
class Carrier(Protocol):
    code: str

    def rates(self, s: Shipment) -> list[Rate]: ...

    def buy(self, s: Shipment, service: str) -> Label: ...

    def void(self, label: Label) -> None: ...

    def track(self, tracking_number: str) -> str: ...
