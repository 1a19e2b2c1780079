"""Identifiers: ULIDs (time-ordered, 26 Crockford base32 chars) with a type prefix."""

from __future__ import annotations

import os
import time
import uuid

__all__ = ["new_ulid", "order_id", "stable_uuid", "webhook_msg_id"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
NAMESPACE = uuid.UUID("6f0b1c52-3d0e-4a59-9c1e-9a9d2b7c4e10")


def new_ulid(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def order_id() -> str:
    return f"ord_{new_ulid()}"


def webhook_msg_id() -> str:
    return f"msg_{new_ulid()}"


def stable_uuid(*parts: str) -> uuid.UUID:
    """A deterministic id (UUIDv5) for things that must be the same on every retry or re-load."""
    return uuid.uuid5(NAMESPACE, "\x1f".join(parts))
