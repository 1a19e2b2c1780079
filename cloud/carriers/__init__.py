"""Carrier adapters: one protocol (:class:`Carrier`), one registry table, the built-in sandbox carrier.

    carrier = get_carrier("sandbox", latency_s=0.2, fail_rate=0.1)
    label = carrier.buy(shipment, "standard")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cloud.carriers.base import (
    SERVICE_LEVELS,
    Address,
    Carrier,
    CarrierError,
    CustomsItem,
    Label,
    Rate,
    Shipment,
)
from cloud.carriers.s10 import format_s10, is_valid_s10, s10_check_digit
from cloud.carriers.sandbox import SandboxCarrier
from cloud.carriers.zpl import escape_field, render_label

__all__ = [
    "REGISTRY",
    "SERVICE_LEVELS",
    "Address",
    "Carrier",
    "CarrierError",
    "CustomsItem",
    "Label",
    "Rate",
    "SandboxCarrier",
    "Shipment",
    "escape_field",
    "format_s10",
    "get_carrier",
    "is_valid_s10",
    "render_label",
    "s10_check_digit",
]

#: carrier code -> factory taking the carrier's settings as keyword arguments
REGISTRY: dict[str, Callable[..., Carrier]] = {"sandbox": SandboxCarrier}


def get_carrier(code: str, **settings: Any) -> Carrier:
    """Build the carrier registered under ``code``; :class:`CarrierError` for an unknown code."""
    try:
        factory = REGISTRY[code]
    except KeyError:
        raise CarrierError(f"unknown carrier {code!r}; known: {', '.join(sorted(REGISTRY))}") from None
    return factory(**settings)
