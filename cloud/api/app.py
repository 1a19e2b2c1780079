"""The cloud's HTTP API: :func:`create_app` is its composition root.

Nothing is built at import time. Route handlers are thin: authenticate, parse, call a service,
shape the response. Every error is RFC 9457 problem+json (:mod:`cloud.api.problems`).

Handlers are plain ``def``: FastAPI runs them in its thread pool, which suits the synchronous
SQLAlchemy engine (the pool is sized for it in :func:`cloud.db.make_engine`).

No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations, and
the handlers close over dependencies built inside :func:`create_app`.
"""

import email.message
import html
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints
from pydantic_core import PydanticCustomError
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.api.problems import HTTP_TITLES, UnsupportedMediaType, install_problem_handlers, problem_response
from cloud.carriers import Carrier, SandboxCarrier
from cloud.catalog import ProductIn, save_product
from cloud.db import make_engine, read_session, upgrade, write_session
from cloud.errors import Unauthorized
from cloud.inventory import ReceiptIn, level_dict, list_stock, receive_stock
from cloud.orders import CancelIn, OrderIn, OrderService
from cloud.serials import SerialSource
from cloud.tenants import TenantContext, authenticate, webhook_endpoint
from sync.settings import Settings

__all__ = ["MAX_BODY_BYTES", "create_app"]

MAX_BODY_BYTES = 1_000_000


def _webhook_url(url: str) -> str:
    """http(s), a host, a valid port, no user:password (the signature authenticates us). Loopback
    and private addresses are fine: receivers run next to the cloud, e.g. the demo's."""
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number in 0..65535
    except ValueError as e:
        raise PydanticCustomError("invalid_url", "not a valid URL ({error})", {"error": str(e)}) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise PydanticCustomError("invalid_url", "the scheme must be http or https")
    if not parts.hostname:
        raise PydanticCustomError("invalid_url", "the URL has no host")
    if port == 0:
        raise PydanticCustomError("invalid_url", "port 0 is not a port to deliver to")
    if "@" in parts.netloc:
        raise PydanticCustomError("invalid_url", "the URL must not carry a user name or password")
    return url


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://[^\s]+$"),
                   AfterValidator(_webhook_url)] | None


class _BodyLimit:
    """Refuse request bodies over ``limit`` bytes with a problem+json 413: at once when Content-Length
    announces it, else when the body read so far passes it (chunked uploads)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"the request body is larger than {self.limit} bytes"
        announced = Headers(scope=scope).get("content-length", "")
        if announced.isdigit() and int(announced) > self.limit:
            response = problem_response(413, HTTP_TITLES[413], detail, instance=scope.get("path"))
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, detail)  # answered by the problem handlers
            return message

        await self.app(scope, counted, send)


# C0 controls but tab/LF/CR, and DEL: PostgreSQL cannot store NUL, and none of them belongs in a
# name, a SKU, a reason or a URL. JSON carries them only as \\u escapes (raw ones are invalid JSON).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_ESCAPE = re.compile(rb"\\u00(?:[01][0-9a-fA-F]|7[fF])")


def _strings(document: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string of a parsed JSON document (keys too) with its path; without recursion, so
    nesting as deep as the JSON parser allows cannot exhaust the stack."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield path + (k,), k
                stack.append((path + (k,), v))
        elif isinstance(value, list):
            stack.extend((path + (i,), v) for i, v in enumerate(value))


async def _refuse_control_characters(request: Request) -> None:
    """Every v1 request: a control character in a path or query parameter or anywhere in the
    JSON body is a 422 with its location, before any handler (or database) sees it."""
    errors: list[dict[str, Any]] = []

    def bad(loc: tuple[str | int, ...]) -> None:
        errors.append({"type": "control_character", "loc": loc, "msg": "contains a control character"})

    for name, value in request.path_params.items():
        if isinstance(value, str) and _CONTROL.search(value):
            bad(("path", name))
    for name, value in request.query_params.multi_items():
        if _CONTROL.search(name) or _CONTROL.search(value):
            bad(("query", name))
    body = await request.body()  # Starlette caches it for the body parameter
    if body and _CONTROL_ESCAPE.search(body):
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            document = None  # a JSON endpoint has answered this already (the problem handlers)
        for path, text in _strings(document):
            if _CONTROL.search(text):
                bad(("body", *path))
    if errors:
        raise RequestValidationError(errors)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def _require_json_body(request: Request) -> None:
    """A body sent to an endpoint that reads JSON must say it is JSON: 415 otherwise (FastAPI would
    hand the raw bytes to the model and answer "Input should be a valid dictionary")."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return
    content_type = request.headers.get("content-type")
    if not _is_json(content_type) and await request.body():
        raise UnsupportedMediaType(content_type)


_bearer = HTTPBearer(auto_error=False, scheme_name="apiKey", description="Authorization: Bearer <api key>")
_PROBLEM = {"description": "problem details (RFC 9457)", "content": {"application/problem+json": {}}}


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    carrier: Carrier | None = None,
    on_feed: Callable[[], None] | None = None,
    migrate: bool = True,
) -> FastAPI:
    """Build the API.

    ``engine``: the cloud database (default: from ``settings``, disposed on shutdown);
    ``carrier``: the label carrier (default: the sandbox carrier with database-backed serials);
    ``on_feed``: called after a commit that added site-feed entries (e.g. ``CloudLink.notify_feed``);
    ``migrate``: bring the schema to head first (idempotent).
    """
    owns_engine = engine is None
    db = engine if engine is not None else make_engine(settings.cloud_database_url())
    if migrate:
        upgrade(db)
    serials = SerialSource("sandbox")
    orders = OrderService(db, carrier or SandboxCarrier(next_serial=serials), serials=serials, on_feed=on_feed)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_engine:
            db.dispose()

    app = FastAPI(
        title="Packline cloud API",
        version="1",
        docs_url=None,  # the Swagger/ReDoc pages load their JS from a CDN; /docs below works offline
        redoc_url=None,
        lifespan=lifespan,
    )
    # not FastAPI's max_body_size: Starlette answers an announced oversize body in text/plain
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    install_problem_handlers(app)
    app.include_router(_system_routes(app, db))
    app.include_router(_v1_routes(db, orders))
    return app


def _tenant_dependency(engine: Engine) -> Callable[..., TenantContext]:
    def current_tenant(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> TenantContext:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized("send Authorization: Bearer <api key>")
        with read_session(engine) as s:
            tenant = authenticate(s, credentials.credentials)
        if tenant is None:
            raise Unauthorized("the API key is not valid")
        return tenant

    return current_tenant


def _v1_routes(engine: Engine, orders: OrderService) -> APIRouter:
    router = APIRouter(prefix="/v1", responses={401: _PROBLEM, 422: _PROBLEM},
                       dependencies=[Depends(_require_json_body), Depends(_refuse_control_characters)])
    Tenant = Annotated[TenantContext, Depends(_tenant_dependency(engine))]

    @router.post("/orders", status_code=201, responses={409: _PROBLEM, 503: _PROBLEM}, tags=["orders"])
    def create_order(
        order: OrderIn,
        tenant: Tenant,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
    ) -> JSONResponse:
        """Validate, route, reserve, buy the label and release the order (or backorder it)."""
        result = orders.create(tenant, order, idempotency_key)
        headers = {"Location": f"/v1/orders/{result.body['id']}"}
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(result.body, status_code=result.status_code, headers=headers)

    @router.get("/orders/{order_id}", responses={404: _PROBLEM}, tags=["orders"])
    def get_order(order_id: str, tenant: Tenant) -> dict[str, Any]:
        return orders.get(tenant, order_id)

    @router.get("/orders", responses={404: _PROBLEM}, tags=["orders"])
    def find_order(tenant: Tenant, external_id: Annotated[str, Query(min_length=1, max_length=128)]) -> dict[str, Any]:
        """Look an order up by the merchant's own reference: ``GET /v1/orders?external_id=ACME-10001``."""
        return orders.find_by_external_id(tenant, external_id)

    @router.get("/orders/{order_id}/label", responses={200: {"content": {"application/zpl": {}}}, 404: _PROBLEM},
                response_class=Response, tags=["orders"])
    def get_label(order_id: str, tenant: Tenant) -> Response:
        """The carrier label as printed at the station: one 4x6 in, 203 dpi ZPL label (UTF-8, ``^CI28``)."""
        tracking, zpl = orders.label(tenant, order_id)
        return Response(zpl.encode("utf-8"), media_type="application/zpl; charset=utf-8",
                        headers={"Content-Disposition": f'inline; filename="{tracking}.zpl"'})

    @router.post("/orders/{order_id}/cancel", responses={404: _PROBLEM, 409: _PROBLEM}, tags=["orders"])
    def cancel_order(order_id: str, tenant: Tenant, body: CancelIn | None = None) -> dict[str, Any]:
        """Cancel an order that is not packed yet (holds and label are voided)."""
        return orders.cancel(tenant, order_id, body)

    @router.post("/products", responses={200: {"description": "updated"}, 201: {"description": "created"}},
                 tags=["products"])
    def put_product(product: ProductIn, tenant: Tenant, response: Response) -> dict[str, Any]:
        """Create or replace a product (by sku)."""
        created, stored = save_product(engine, tenant.id, product)
        response.status_code = 201 if created else 200
        return stored

    @router.post("/inventory/receipts", status_code=201, tags=["inventory"])
    def post_receipt(receipt: ReceiptIn, tenant: Tenant, response: Response) -> dict[str, Any]:
        """Book stock in; repeating a ``movement_id`` books nothing and answers 200. Backordered
        orders of this sku that can now ship are released (``backorders_released``)."""
        result = receive_stock(engine, tenant.id, receipt)
        released: list[str] = []
        if result.applied:
            released = orders.release_backorders(tenant, [receipt.sku])
        else:
            response.status_code = 200
        return {"movement_id": str(result.movement_id), "applied": result.applied, "stock": level_dict(result.level),
                "backorders_released": released}

    @router.get("/webhook", tags=["webhooks"])
    def get_webhook(tenant: Tenant) -> dict[str, Any]:
        """Where order events are POSTed, and the Standard Webhooks secret that signs them."""
        with read_session(engine) as s:
            return webhook_endpoint(s, tenant.id)

    @router.put("/webhook", tags=["webhooks"])
    def put_webhook(body: WebhookIn, tenant: Tenant) -> dict[str, Any]:
        """Point order events (order.released, order.shipped, order.cancelled) at ``url``;
        ``null`` stops delivery. The signing secret does not change."""
        with write_session(engine) as s:
            return webhook_endpoint(s, tenant.id, body.url, set_url=True)

    @router.get("/inventory", tags=["inventory"])
    def get_inventory(
        tenant: Tenant,
        sku: Annotated[str | None, Query(max_length=64)] = None,
        site: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        """on_hand / reserved / available per sku and site, for the caller's tenant."""
        return {"items": list_stock(engine, tenant.id, sku=sku, site=site)}

    return router


def _system_routes(app: FastAPI, engine: Engine) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    def healthz() -> Response:
        try:
            with read_session(engine) as s:
                s.connection().execute(text("SELECT 1"))
        except Exception as e:
            return problem_response(503, "Unhealthy", f"database: {type(e).__name__}")
        return JSONResponse({"status": "ok", "database": "ok"})

    @router.get("/docs", response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        """Offline API reference: no CDN, just the OpenAPI document rendered as a list."""
        spec = app.openapi()
        rows = []
        for path, ops in spec.get("paths", {}).items():
            for method, op in ops.items():
                summary = op.get("summary", "")
                desc = (op.get("description") or "").split("\n")[0]
                rows.append(
                    f"<tr><td><code>{html.escape(method.upper())}</code></td><td><code>{html.escape(path)}</code></td>"
                    f"<td>{html.escape(summary)}</td><td>{html.escape(desc)}</td></tr>"
                )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Packline API</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em .8em;vertical-align:top}</style>"
            f"</head><body><h1>{html.escape(spec['info']['title'])}</h1>"
            "<p>Authenticate with <code>Authorization: Bearer &lt;api key&gt;</code>. Errors are "
            "RFC 9457 <code>application/problem+json</code>. The full schema: "
            "<a href='/openapi.json'>/openapi.json</a>.</p>"
            f"<table><tr><th>method</th><th>path</th><th>summary</th><th></th></tr>{''.join(rows)}</table>"
            "</body></html>"
        )
        return HTMLResponse(page)

    return router
