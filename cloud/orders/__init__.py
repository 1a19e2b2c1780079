"""Orders: request models and the service the API calls."""

from cloud.orders.schemas import CancelIn, GiftIn, OrderIn, OrderLineIn, ShipToIn, request_hash
from cloud.orders.service import CANCELLABLE, OrderResult, OrderService, order_view

__all__ = [
    "CANCELLABLE",
    "CancelIn",
    "GiftIn",
    "OrderIn",
    "OrderLineIn",
    "OrderResult",
    "OrderService",
    "ShipToIn",
    "order_view",
    "request_hash",
]
