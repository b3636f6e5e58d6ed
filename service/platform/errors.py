"""Every error the service sends: a 4xx/5xx status and a JSON object body.

Body: ``{"error": "<what was wrong>", "detail": <where / why>, ...}``. Handlers below turn
our own :class:`ApiError`, pydantic validation errors, framework HTTP errors and
anything unexpected into that shape, so a client never sees a list or a bare text.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, a message and (optionally) where it happened."""

    status = 400

    def __init__(
        self,
        error: str,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail
        self.headers = headers
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error}
        if self.detail is not None:
            body["detail"] = self.detail
        return body


class InvalidInput(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class Unavailable(ApiError):
    """Overloaded or not ready: the client may retry later."""

    status = 503

    def __init__(self, error: str, detail: Any = None, retry_after_s: int = 1) -> None:
        super().__init__(error, detail, headers={"Retry-After": str(retry_after_s)})


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; NumPy arrays in ``body`` are serialised directly."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, "application/json"
    )


def location(loc: tuple[Any, ...]) -> str:
    """``("images", 0, "list[...]", 3)`` -> ``"images[0][3]"`` (union branch names dropped)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "[" not in part and "(" not in part:  # skip pydantic's union-branch labels
            text += f".{part}" if text else part
    return text or "body"


def validation_detail(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic errors as ``[{"field": "images[0][3]", "message": ...}]``, one per place."""
    seen: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_context=False):
        seen.setdefault(location(err["loc"]), err["msg"])
    return [{"field": field, "message": message} for field, message in list(seen.items())[:20]]


def invalid_body(exc: ValidationError) -> InvalidInput:
    detail = validation_detail(exc)
    first = detail[0] if detail else {"field": "body", "message": "invalid"}
    return InvalidInput(f"invalid request: {first['field']}: {first['message']}", detail)


async def api_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response(exc.body(), exc.status, exc.headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404 no such route, 405 wrong method) in the one error shape."""
    assert isinstance(exc, HTTPException)
    return json_response(
        {"error": exc.detail or "HTTP error", "detail": framework_detail(request.scope, exc.status_code)},
        exc.status_code,
        getattr(exc, "headers", None),
    )


def framework_detail(scope: Scope, status: int) -> dict[str, Any]:
    """What a framework error (no route, wrong method, ...) concerned: status, method and path."""
    return {"status": status, "method": scope.get("method"), "path": scope.get("path")}


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    # The exception (its class, message and traceback) goes to the log only: it tells a
    # client nothing it can act on, and may tell an attacker how the server is built.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_response({"error": "internal server error", "detail": "the cause is in the server log"}, 500)
