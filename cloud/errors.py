"""The cloud's exception root and the expected failures services raise (STYLE 14).

The API maps them to RFC 9457 problem documents (:mod:`cloud.api.problems`); other callers
(loader, CLI, ingest) handle them as values. Programmer errors stay plain exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CarrierUnavailable",
    "CloudError",
    "Conflict",
    "FieldProblem",
    "InvalidRequest",
    "NotFound",
    "Unauthorized",
    "pointer",
    "problems_from_pydantic",
]


@dataclass(frozen=True)
class FieldProblem:
    """One bad field: a JSON Pointer (RFC 6901) into the request body, a stable code, a sentence."""

    pointer: str
    code: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail, "code": self.code}


class CloudError(Exception):
    """Root of the cloud's expected failures."""

    status = 500
    title = "Internal error"
    type = "about:blank"

    def __init__(self, detail: str, *, errors: Sequence[FieldProblem] = (), **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        self.extra = extra


class InvalidRequest(CloudError):
    status = 422
    title = "Request is not valid"
    type = "https://packline.dev/problems/invalid-request"


class Unauthorized(CloudError):
    status = 401
    title = "Unauthorized"
    type = "https://packline.dev/problems/unauthorized"


class NotFound(CloudError):
    status = 404
    title = "Not found"
    type = "https://packline.dev/problems/not-found"


class Conflict(CloudError):
    status = 409
    title = "Conflict"
    type = "https://packline.dev/problems/conflict"


class CarrierUnavailable(CloudError):
    """No label could be bought; nothing was written, the request can be retried as is."""

    status = 503
    title = "Carrier unavailable"
    type = "https://packline.dev/problems/carrier-unavailable"


def _escape(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def pointer(*parts: str | int) -> str:
    """``pointer("lines", 0, "qty") == "/lines/0/qty"`` (RFC 6901 escaping)."""
    return "".join("/" + _escape(p) for p in parts)


def problems_from_pydantic(errors: Iterable[Any], *, strip: tuple[str, ...] = ()) -> list[FieldProblem]:
    """Turn pydantic/FastAPI error dicts into field problems; ``strip`` drops leading ``loc``
    parts such as FastAPI's ``"body"``."""
    out: list[FieldProblem] = []
    for e in errors:
        loc = list(e.get("loc", ()))
        if loc and loc[0] in strip:
            loc = loc[1:]
        # pydantic puts the failing member of a union/tagged type in loc; keep only data paths
        loc = [p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "union["))]
        out.append(FieldProblem(pointer(*loc) if loc else "", str(e.get("type", "invalid")), str(e.get("msg", ""))))
    return out
