"""Outbound webhooks, signed the Standard Webhooks way (https://www.standardwebhooks.com).

Every request carries three headers::

    webhook-id:         msg_01J…           the same on every attempt of one message
    webhook-timestamp:  1767225600         unix seconds of this attempt
    webhook-signature:  v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>

where ``key`` is the base64-decoded part of the tenant's ``whsec_…`` secret. The body is
``{"type": "order.shipped", "timestamp": "<ISO 8601>", "data": {...}}`` and is fixed when the
message is enqueued (in the same transaction as the business change), so retries send the
same bytes.

:func:`sign` and :func:`verify` are pure; :class:`WebhookDispatcher` is the delivery worker:
2xx = delivered, anything else (or no answer) = retry with exponential backoff, until
``max_attempts``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud.db import write_session
from cloud.dbtypes import utcnow
from cloud.ids import webhook_msg_id
from cloud.models import Tenant, WebhookDelivery, table

__all__ = [
    "WebhookDispatcher",
    "WebhookVerificationError",
    "enqueue",
    "sign",
    "verify",
]

log = logging.getLogger("packline.webhooks")

_DELIVERIES = table(WebhookDelivery)
_TENANTS = table(Tenant)
SECRET_PREFIX = "whsec_"


class WebhookVerificationError(Exception):
    """The request is not a valid, fresh, correctly signed webhook."""


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the signing secret is not base64 (whsec_<base64>)") from None


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) for one attempt."""
    signed = f"{msg_id}.{int(timestamp)}.".encode() + _as_bytes(body)
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: int = 300,
    *,
    now: float | None = None,
) -> None:
    """Check a received webhook; raise :class:`WebhookVerificationError` unless one of the
    (space-separated) ``v1`` signatures matches and the timestamp is within ``tolerance_s``."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lower["webhook-id"]
        ts_text = lower["webhook-timestamp"]
        signatures = lower["webhook-signature"]
    except KeyError as e:
        raise WebhookVerificationError(f"missing header {e.args[0]}") from None
    try:
        timestamp = int(ts_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance window")
    expected = sign(secret, msg_id, timestamp, body).encode("ascii")
    for candidate in signatures.split():
        version, _, _sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(candidate.encode("ascii", "replace"), expected):
            return
    raise WebhookVerificationError("no matching signature")


def enqueue(session: Session, tenant: str, event_type: str, data: Mapping[str, Any]) -> str:
    """Queue one message in the caller's transaction; returns its ``webhook-id``."""
    now = utcnow()
    msg_id = webhook_msg_id()
    body = json.dumps(
        {"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    session.connection().execute(
        sa.insert(_DELIVERIES).values(
            id=msg_id,
            tenant=tenant,
            event_type=event_type,
            payload=body,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    return msg_id


@dataclass(frozen=True)
class _Due:
    id: str
    payload: str
    attempts: int
    url: str | None
    secret: str


class WebhookDispatcher:
    """Delivers due webhook messages. Several dispatchers may run against one database: a
    message is leased (``next_attempt_at`` pushed by ``lease_s``) before it is sent."""

    def __init__(
        self,
        engine: Engine,
        client: httpx.Client,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 12,
        base_delay_s: float = 5.0,
        max_delay_s: float = 6 * 3600.0,
        lease_s: float = 60.0,
        batch: int = 50,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.client = client
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        # a claimed batch is sent one by one: the lease must outlast the slowest batch, or another
        # dispatcher would claim its tail and deliver it a second time
        self.lease_s = max(lease_s, batch * timeout_s + 10.0)
        self.batch = batch
        self.clock = clock

    def backoff_s(self, attempts: int) -> float:
        """Delay before the next attempt after ``attempts`` failed ones (5 s, 10 s, 20 s, … capped)."""
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempts - 1)))

    def _claim(self) -> list[_Due]:
        now = self.clock()
        with write_session(self.engine) as s:
            conn = s.connection()
            rows = conn.execute(
                sa.select(
                    _DELIVERIES.c.id,
                    _DELIVERIES.c.payload,
                    _DELIVERIES.c.attempts,
                    _TENANTS.c.webhook_url,
                    _TENANTS.c.webhook_secret,
                )
                .join(_TENANTS, _TENANTS.c.id == _DELIVERIES.c.tenant)
                .where(_DELIVERIES.c.delivered_at.is_(None), _DELIVERIES.c.next_attempt_at <= now)
                .order_by(_DELIVERIES.c.next_attempt_at)
                .limit(self.batch)
                .with_for_update(skip_locked=True, of=_DELIVERIES)
            ).all()
            due = [_Due(*r) for r in rows]
            if due:
                conn.execute(
                    sa.update(_DELIVERIES)
                    .where(_DELIVERIES.c.id.in_([d.id for d in due]))
                    .values(next_attempt_at=now + timedelta(seconds=self.lease_s))
                )
        return due

    def _attempt(self, d: _Due) -> tuple[int | None, str | None]:
        if not d.url:
            return None, "tenant has no webhook_url"
        timestamp = int(self.clock().timestamp())
        headers = {
            "content-type": "application/json",
            "user-agent": "Packline-Webhooks/1",
            "webhook-id": d.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(d.secret, d.id, timestamp, d.payload),
        }
        try:
            response = self.client.post(d.url, content=d.payload.encode("utf-8"), headers=headers,
                                        timeout=self.timeout_s)
        except httpx.HTTPError as e:
            return None, f"{type(e).__name__}: {e}"[:500]
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"

    def _record(self, d: _Due, status: int | None, error: str | None) -> None:
        now = self.clock()
        attempts = d.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_status": status, "last_error": error}
        if error is None:
            values.update(delivered_at=now, next_attempt_at=None)
        elif attempts >= self.max_attempts or (status is None and error == "tenant has no webhook_url"):
            values.update(next_attempt_at=None)  # given up: stays undelivered, visible for an operator
            log.warning("webhook %s given up after %d attempts: %s", d.id, attempts, error)
        else:
            values.update(next_attempt_at=now + timedelta(seconds=self.backoff_s(attempts)))
        with write_session(self.engine) as s:
            s.connection().execute(sa.update(_DELIVERIES).where(_DELIVERIES.c.id == d.id).values(**values))

    def deliver_due(self) -> int:
        """Attempt every message that is due now; returns how many were delivered (2xx)."""
        delivered = 0
        for d in self._claim():
            status, error = self._attempt(d)
            self._record(d, status, error)
            delivered += error is None
        return delivered

    def run_forever(self, stop_event: threading.Event, interval_s: float = 1.0) -> None:
        """Deliver until ``stop_event`` is set; a failing database only delays delivery."""
        while not stop_event.is_set():
            try:
                busy = self.deliver_due() > 0
            except Exception:
                log.exception("webhook delivery round failed")
                busy = False
            if not busy:
                stop_event.wait(interval_s)
