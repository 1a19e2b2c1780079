"""Load a directory of JSON seed data (``packline/sample_data`` shape) into the cloud database.

Files read: ``tenants.json``, ``sites.json``, ``products.json``, ``stock.json``, ``packers.json``
(each optional, but a folder with none of them is refused: it is the wrong folder; any other
file is ignored). Everything is checked first and written in ONE transaction: a bad record raises
:class:`LoadError` naming the file and index, and nothing is written. :func:`read_seed` does the
file checks alone, without a database, so a caller can refuse a wrong folder before it creates
or migrates one.

Loading again (the same or an edited folder) into a database in use:

* **the file wins** for what it describes: tenants' name, country and VAT id, sites, packers and
  products are upserted, so a product edited through the API (``POST /v1/products``) is set back
  to the file's values. That is what "load this file" means; leave a record out of the file to
  keep the database's version.
* **a tenant's webhook URL is kept** unless the file gives one: ``"webhook_url": null`` (or no
  field) never wipes a URL the merchant set with ``PUT /v1/webhook``; a URL in the file replaces
  it. The webhook signing secret is never changed.
* **stock is booked once**: each stock row is a receipt movement whose id is derived from
  (tenant, sku, site, qty), so loading the same file twice books it once; a row of qty 0 books
  nothing. The file is not a stock count: a row whose qty was changed is a new receipt of that
  qty (correct stock through ``POST /v1/inventory/receipts``).
* **API keys rotate, bounded**: every load issues each tenant of ``tenants.json`` a new API key
  and returns it in clear (it is stored only as a SHA-256 digest, so it cannot be shown again).
  The keys of the newest ``KEEP_API_KEYS`` (2) loads stay valid, so the key a merchant's
  integration uses keeps working across the next re-load and can be swapped for the new one
  without downtime; older ones are revoked (``revoked_at`` set, the row kept), so re-running the
  command does not pile up valid credentials. Each tenant's entry says how many keys this load
  revoked (``revoked_api_keys``). Every key in ``api_keys`` today comes from this loader; if
  another way to issue keys is added, give ``api_keys`` a column saying who issued a key and
  restrict this rotation to the loader's own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud import ledger
from cloud.catalog import ProductIn, gtin_conflicts, upsert_product
from cloud.db import dialect_insert, write_session
from cloud.dbtypes import utcnow
from cloud.errors import CloudError
from cloud.ids import stable_uuid
from cloud.models import ApiKey, Packer, Product, Site, Tenant, table
from cloud.tenants import hash_api_key, issue_api_key, new_webhook_secret, normalise_vat_id

__all__ = ["FILES", "KEEP_API_KEYS", "LoadError", "Seed", "load_dir", "read_seed"]

log = logging.getLogger("packline.cloud.loader")

FILES = ("tenants.json", "sites.json", "products.json", "stock.json", "packers.json")
KEEP_API_KEYS = 2
"""Valid API keys per tenant after a load: this load's and the previous load's."""
_KEYS = table(ApiKey)
_TENANTS = table(Tenant)
_SITES = table(Site)
_PRODUCTS = table(Product)
_PACKERS = table(Packer)
_M = TypeVar("_M", bound=BaseModel)


class LoadError(CloudError):
    """A seed file that cannot be loaded; names the file and the record index."""

    status = 422
    title = "Seed data is not valid"

    def __init__(self, file: str, index: int | None, detail: str) -> None:
        where = f"{file}[{index}]" if index is not None else file
        super().__init__(f"{where}: {detail}")
        self.file = file
        self.index = index


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str = Field(min_length=1, max_length=200)
    country: str = Field(pattern=r"^[A-Z]{2}$")
    vat_id: str | None = None
    webhook_url: str | None = Field(default=None, pattern=r"^https?://")


class SiteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    name: str = Field(min_length=1)
    country: str = Field(pattern=r"^[A-Z]{2}$")
    postal_code: str
    city: str
    street: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    timezone: str
    cutoffs: dict[str, str] = Field(default_factory=dict)
    licences: list[str] = Field(default_factory=list)


class StockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str
    sku: str
    site: str
    qty: int = Field(ge=0)
    bin: str | None = None


class PackerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    badge: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1)
    site: str
    language: str | None = None


class ProductRecord(ProductIn):
    tenant: str  # required in the seed file


def _read(path: Path, name: str, model: type[_M]) -> list[_M]:
    file = path / name
    if not file.exists():
        return []
    try:
        raw = json.loads(file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(name, None, f"cannot read JSON: {e}") from None
    if not isinstance(raw, list):
        raise LoadError(name, None, "must be a JSON array of objects")
    out: list[_M] = []
    for i, item in enumerate(raw):
        try:
            out.append(model.model_validate(item))
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise LoadError(name, i, f"{loc}: {first['msg']}" if loc else first["msg"]) from None
    return out


def _check_unique(name: str, keys: Sequence[tuple[str, ...]]) -> None:
    seen: dict[tuple[str, ...], int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            raise LoadError(name, i, f"duplicate of record {seen[key]} ({'/'.join(key)})")
        seen[key] = i


@dataclass(frozen=True)
class Seed:
    """The checked content of a seed folder (file-level checks only; references are checked
    against the database by :func:`load_dir`)."""

    tenants: list[TenantIn]
    sites: list[SiteIn]
    products: list[ProductRecord]
    stock: list[StockIn]
    packers: list[PackerIn]
    vat_ids: dict[str, str | None]


def read_seed(path: str | Path) -> Seed:
    """Read and check the seed files in ``path`` without touching any database.

    Raises :class:`LoadError` for a missing folder, a folder holding none of :data:`FILES`
    (naming them), unreadable JSON or a bad record (naming the file and index).
    """
    root = Path(path)
    if not root.is_dir():
        raise LoadError(str(root), None, "not a directory")
    if not any((root / name).exists() for name in FILES):
        raise LoadError(
            str(root), None, f"holds none of the seed files {', '.join(FILES)}: is this the right folder?"
        )
    tenants = _read(root, "tenants.json", TenantIn)
    sites = _read(root, "sites.json", SiteIn)
    products = _read(root, "products.json", ProductRecord)
    stock = _read(root, "stock.json", StockIn)
    packers = _read(root, "packers.json", PackerIn)
    _check_unique("tenants.json", [(t.id,) for t in tenants])
    _check_unique("sites.json", [(s.id,) for s in sites])
    _check_unique("products.json", [(p.tenant, p.sku) for p in products])
    _check_unique("packers.json", [(p.badge,) for p in packers])
    vat_ids: dict[str, str | None] = {}
    for i, t in enumerate(tenants):
        try:
            vat_ids[t.id] = normalise_vat_id(t.vat_id) if t.vat_id else None
        except ValueError as e:
            raise LoadError("tenants.json", i, str(e)) from None
    return Seed(tenants, sites, products, stock, packers, vat_ids)


def _rotate_api_key(session: Session, tenant: str, keep: int) -> tuple[str, int]:
    """Issue ``tenant`` a new key; revoke its active keys beyond the ``keep`` newest (the new one
    always stays). Returns the new key in clear and how many keys were revoked."""
    key = issue_api_key(session, tenant)
    conn = session.connection()
    new_hash = hash_api_key(key)
    older = conn.execute(
        sa.select(_KEYS.c.key_hash)
        .where(_KEYS.c.tenant == tenant, _KEYS.c.revoked_at.is_(None), _KEYS.c.key_hash != new_hash)
        .order_by(_KEYS.c.created_at.desc(), _KEYS.c.key_hash.desc())
    ).scalars().all()
    revoke = older[max(0, keep - 1):]
    if revoke:
        conn.execute(
            sa.update(_KEYS).where(_KEYS.c.key_hash.in_(revoke)).values(revoked_at=utcnow())
        )
        log.warning("tenant %s: revoked %d older API key(s); the newest %d stay valid", tenant, len(revoke), keep)
    return key, len(revoke)


def load_dir(
    engine: Engine,
    path: str | Path,
    *,
    webhook_secret_bytes: int = 24,
    keep_api_keys: int = KEEP_API_KEYS,
) -> dict[str, dict[str, Any]]:
    """Load the seed files in ``path`` (see the module docstring for what a re-load changes).

    Returns ``{tenant_id: {"api_key": ..., "webhook_secret": ..., "revoked_api_keys": n}}`` for
    every tenant of ``tenants.json``: the new key in clear (shown once), the tenant's webhook
    signing secret, and how many older keys this load revoked (``keep_api_keys`` stay valid, this
    load's included). New tenants get a webhook secret of ``webhook_secret_bytes`` random bytes
    (``Settings.signing_secret_bytes``).
    """
    if keep_api_keys < 1:
        raise ValueError(f"keep_api_keys must be at least 1, got {keep_api_keys}")
    seed = read_seed(path)
    tenants, sites, products, stock, packers = seed.tenants, seed.sites, seed.products, seed.stock, seed.packers
    vat_ids = seed.vat_ids

    out: dict[str, dict[str, Any]] = {}
    with write_session(engine) as s:
        conn = s.connection()
        known_tenants = {r[0] for r in conn.execute(sa.select(_TENANTS.c.id))} | {t.id for t in tenants}
        known_sites = {r[0] for r in conn.execute(sa.select(_SITES.c.id))} | {x.id for x in sites}
        for i, p in enumerate(products):
            if p.tenant not in known_tenants:
                raise LoadError("products.json", i, f"unknown tenant {p.tenant!r}")
        for i, pk in enumerate(packers):
            if pk.site not in known_sites:
                raise LoadError("packers.json", i, f"unknown site {pk.site!r}")

        for t in tenants:
            secret = conn.execute(sa.select(_TENANTS.c.webhook_secret).where(_TENANTS.c.id == t.id)).scalar()
            secret = secret or new_webhook_secret(webhook_secret_bytes)
            ins = dialect_insert(conn, _TENANTS).values(
                id=t.id, name=t.name, country=t.country, vat_id=vat_ids[t.id], webhook_url=t.webhook_url,
                webhook_secret=secret, created_at=utcnow(),
            )
            # no URL in the file keeps the one the merchant set through PUT /v1/webhook
            updated = ("name", "country", "vat_id") + (("webhook_url",) if t.webhook_url is not None else ())
            conn.execute(
                ins.on_conflict_do_update(index_elements=["id"], set_={k: ins.excluded[k] for k in updated})
            )
            key, revoked = _rotate_api_key(s, t.id, keep_api_keys)
            out[t.id] = {"api_key": key, "webhook_secret": secret, "revoked_api_keys": revoked}
        for x in sites:
            values = x.model_dump()
            ins = dialect_insert(conn, _SITES).values(**values)
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=["id"], set_={k: ins.excluded[k] for k in values if k != "id"}
                )
            )
        for p in products:
            upsert_product(s, p.tenant, p)
        for i, p in enumerate(products):  # one GTIN, one SKU per tenant: a scan must name one item
            for gtin, other in gtin_conflicts(s, p.tenant, p.sku, list(p.gtins)).items():
                raise LoadError("products.json", i, f"GTIN {gtin} is already {p.tenant}'s {other}")
        for pk in packers:
            values = pk.model_dump()
            ins = dialect_insert(conn, _PACKERS).values(**values)
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=["badge"], set_={k: ins.excluded[k] for k in values if k != "badge"}
                )
            )
        known_products = {(r[0], r[1]) for r in conn.execute(sa.select(_PRODUCTS.c.tenant, _PRODUCTS.c.sku))}
        for i, row in enumerate(stock):
            if (row.tenant, row.sku) not in known_products:
                raise LoadError("stock.json", i, f"unknown product {row.tenant}/{row.sku}")
            if row.site not in known_sites:
                raise LoadError("stock.json", i, f"unknown site {row.site!r}")
            if row.qty == 0:
                continue
            ledger.receive(
                s,
                tenant=row.tenant,
                sku=row.sku,
                site=row.site,
                qty=row.qty,
                bin=row.bin,
                movement_id=stable_uuid("seed-stock", row.tenant, row.sku, row.site, str(row.qty)),
                reason="seed stock",
            )
    return out
