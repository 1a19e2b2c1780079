"""RFC 9457 problem details for every error the API returns (``application/problem+json``).

Field errors go in ``errors: [{pointer, detail, code}]`` (JSON Pointers into the request body);
errors in query, path or header parameters carry ``parameter`` instead of ``pointer``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud.errors import CloudError, FieldProblem, problems_from_pydantic

__all__ = ["PROBLEM_JSON", "install_problem_handlers", "problem_response"]

log = logging.getLogger("packline.api")

PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    type_: str = "about:blank",
    errors: Sequence[dict[str, Any]] = (),
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = list(errors)
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in exc.errors():
        loc = list(e.get("loc", ()))
        where = loc[0] if loc else "body"
        if e.get("type") == "json_invalid":
            out.append(FieldProblem("", "json_invalid", str(e.get("msg", "invalid JSON"))).as_dict())
        elif where == "body":
            out.extend(p.as_dict() for p in problems_from_pydantic([e], strip=("body",)))
        else:
            name = str(loc[1]) if len(loc) > 1 else str(where)
            out.append({"parameter": name, "in": str(where), "detail": str(e.get("msg", "")),
                        "code": str(e.get("type", "invalid"))})
    return out


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(CloudError)
    async def _cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        headers: dict[str, str] = {}
        extra = dict(exc.extra)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="packline"'
        retry_after = extra.pop("retry_after_s", None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return problem_response(
            exc.status,
            exc.title,
            exc.detail,
            type_=exc.type,
            errors=[p.as_dict() for p in exc.errors],
            instance=request.url.path,
            headers=headers or None,
            **extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(
            422,
            "Request is not valid",
            "the request does not match the schema",
            type_="https://packline.dev/problems/invalid-request",
            errors=_validation_errors(exc),
            instance=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed", 413: "Request too large"}.get(
            exc.status_code, "HTTP error"
        )
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(exc.status_code, title, detail, instance=request.url.path,
                                headers=dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal error", "an unexpected error occurred; it was logged",
                                instance=request.url.path)
