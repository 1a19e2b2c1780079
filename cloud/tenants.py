"""Tenants (merchants): API keys, webhook secrets, VAT ids, authentication.

API keys are shown once and stored only as SHA-256 digests (``api_keys``); a tenant may hold
several, so a key can be rotated without downtime.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session
from stdnum.eu import vat as eu_vat
from stdnum.exceptions import ValidationError as StdnumValidationError

from cloud.dbtypes import utcnow
from cloud.models import ApiKey, Tenant, table

__all__ = [
    "API_KEY_PREFIX",
    "TenantContext",
    "authenticate",
    "hash_api_key",
    "issue_api_key",
    "new_api_key",
    "new_webhook_secret",
    "normalise_vat_id",
    "webhook_endpoint",
]

API_KEY_PREFIX = "pl_"
_TENANTS = table(Tenant)
_KEYS = table(ApiKey)


@dataclass(frozen=True)
class TenantContext:
    """Who is calling: what a request handler needs of its tenant."""

    id: str
    name: str
    country: str
    webhook_url: str | None


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_webhook_secret(nbytes: int = 24) -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of ``nbytes`` random bytes."""
    if not 24 <= nbytes <= 64:
        raise ValueError("webhook secrets are 24..64 random bytes")
    return "whsec_" + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def normalise_vat_id(vat_id: str) -> str:
    """Validate an EU VAT id (country prefix + check digits) and return its compact form;
    ``ValueError`` with the reason otherwise."""
    try:
        return str(eu_vat.validate(vat_id))
    except StdnumValidationError as e:
        raise ValueError(f"VAT id {vat_id!r} is not valid: {e}") from None


def issue_api_key(session: Session, tenant: str) -> str:
    """Create a new key for ``tenant`` (existing keys stay valid) and return it in clear, once."""
    key = new_api_key()
    session.connection().execute(sa.insert(_KEYS).values(key_hash=hash_api_key(key), tenant=tenant, created_at=utcnow()))
    return key


def webhook_endpoint(session: Session, tenant: str, url: str | None = None, *, set_url: bool = False) -> dict[str, str | None]:
    """The tenant's webhook endpoint ``{"url", "secret"}``; with ``set_url`` it points it at ``url``
    (``None`` turns delivery off). The signing secret is kept, so receivers need no new secret."""
    conn = session.connection()
    if set_url:
        conn.execute(sa.update(_TENANTS).where(_TENANTS.c.id == tenant).values(webhook_url=url))
    row = conn.execute(sa.select(_TENANTS.c.webhook_url, _TENANTS.c.webhook_secret).where(_TENANTS.c.id == tenant)).one()
    return {"url": row[0], "secret": row[1]}


def authenticate(session: Session, api_key: str) -> TenantContext | None:
    """The tenant owning ``api_key`` (one indexed lookup), or ``None``."""
    if not api_key or len(api_key) > 200:
        return None
    row = session.connection().execute(
        sa.select(_TENANTS.c.id, _TENANTS.c.name, _TENANTS.c.country, _TENANTS.c.webhook_url)
        .join(_KEYS, _KEYS.c.tenant == _TENANTS.c.id)
        .where(_KEYS.c.key_hash == hash_api_key(api_key), _KEYS.c.revoked_at.is_(None))
    ).first()
    return TenantContext(*row) if row else None
