"""RFC 9457 problem details for every error the API returns (``application/problem+json``).

Field errors go in ``errors: [{pointer, detail, code}]`` (JSON Pointers into the request body);
errors in query, path or header parameters carry ``parameter`` instead of ``pointer``. A body that
cannot be read as JSON at all (syntax, encoding, nesting) is one error at pointer ``""``.
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

__all__ = ["HTTP_TITLES", "PROBLEM_JSON", "UnsupportedMediaType", "install_problem_handlers", "problem_response"]

log = logging.getLogger("packline.api")

PROBLEM_JSON = "application/problem+json"
_INVALID_REQUEST = "https://packline.dev/problems/invalid-request"
HTTP_TITLES = {404: "Not found", 405: "Method not allowed", 413: "Content too large"}


class UnsupportedMediaType(Exception):
    """The body is not in the media type the endpoint reads (415, naming the one it wants)."""

    def __init__(self, sent: str | None, expected: str = "application/json") -> None:
        super().__init__(sent)
        self.sent = sent
        self.expected = expected


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


def _unreadable_body(exc: StarletteHTTPException) -> dict[str, str] | None:
    """FastAPI answers a JSON body it could not decode with a bare 400 (``raise ... from`` the
    cause); name the cause as an error at the body (pointer ``""``)."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        return FieldProblem("", "json_invalid", f"the body is not UTF-8 JSON ({cause.reason} at byte {cause.start})"
                            ).as_dict()
    if isinstance(cause, RecursionError):
        return FieldProblem("", "json_too_deep", "the JSON is nested too deeply to be read").as_dict()
    return FieldProblem("", "json_invalid", f"the body cannot be read as JSON ({type(cause).__name__})").as_dict()


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in exc.errors():
        loc = list(e.get("loc", ()))
        where = loc[0] if loc else "body"
        if e.get("type") == "json_invalid":
            why = (e.get("ctx") or {}).get("error")
            at = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
            detail = f"{e.get('msg', 'invalid JSON')}: {why}{at}" if why else str(e.get("msg", "invalid JSON"))
            out.append(FieldProblem("", "json_invalid", detail).as_dict())
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
            type_=_INVALID_REQUEST,
            errors=_validation_errors(exc),
            instance=request.url.path,
        )

    @app.exception_handler(UnsupportedMediaType)
    async def _media_type(request: Request, exc: UnsupportedMediaType) -> JSONResponse:
        sent = f"Content-Type {exc.sent}" if exc.sent else "no Content-Type"
        detail = f"send the body as {exc.expected} (Content-Type: {exc.expected}); the request had {sent}"
        return problem_response(
            415,
            "Unsupported media type",
            detail,
            type_="https://packline.dev/problems/unsupported-media-type",
            errors=[{"parameter": "Content-Type", "in": "header", "detail": f"must be {exc.expected}",
                     "code": "unsupported_media_type"}],
            instance=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body_error = _unreadable_body(exc)
        if body_error is not None:
            return problem_response(422, "Request is not valid", "the body is not valid JSON", type_=_INVALID_REQUEST,
                                    errors=[body_error], instance=request.url.path)
        title = HTTP_TITLES.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(exc.status_code, title, detail, instance=request.url.path,
                                headers=dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal error", "an unexpected error occurred; it was logged",
                                instance=request.url.path)
