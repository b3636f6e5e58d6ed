"""Every error the service answers: a 4xx/5xx status and one JSON object body, rendered once.

Body: ``{"error": "<what was wrong>", "detail": <where / why>, "request_id": "<id>"}``
(``detail`` only where there is one). :func:`render_error` is the one function that makes that
body and its headers; every path that answers an error calls it: the task handler
(``service.api.handler``), the ASGI exception handlers (``service.api.error_handlers``), the
middleware's refusals and the framework's own errors (``service.transport.middleware``), and
the protocol's 400/408/503 (``service.transport.connections``). So an error looks the same
byte for byte whichever layer answered it, and :func:`log_failed_request` is its one log line.

No HTTP framework here: this is the bottom layer, imported by every other.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
JSON = b"application/json"


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


class RequestTimeout(ApiError):
    """The client was too slow: headers or body did not arrive in time."""

    status = 408


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class InternalError(ApiError):
    """A bug, not the client's fault: the cause goes to the log, never to the client."""

    status = 500

    def __init__(self, detail: Any = "the cause is in the server log") -> None:
        super().__init__("internal server error", detail)


class Unavailable(ApiError):
    """Overloaded or not ready: the client may retry later."""

    status = 503

    def __init__(self, error: str, detail: Any = None, retry_after_s: int = 1) -> None:
        super().__init__(error, detail, headers={"Retry-After": str(retry_after_s)})


class Timeout(ApiError):
    """Not answered within the request deadline (``MODELSERVE_HTTP_TIMEOUT_S``).

    Worded as BentoML's own timeout middleware words it, so that a client sees one message
    whichever of the two answered.
    """

    status = 504

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"Not able to process the request in {timeout_s} seconds")


class Reply(NamedTuple):
    """An answer ready for any adapter: status, headers (lower-case, without framing), body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def render_error(error: ApiError, request_id: str) -> Reply:
    """The one rendering of an error answer: its JSON body with the request id, and headers.

    Headers: the error's own (``Retry-After``), then content type and the request id; the
    adapter adds framing (content length, connection).
    """
    return render_body(error.status, error.body(), request_id, error.headers)


def render_body(
    status: int, body: dict[str, Any], request_id: str, headers: dict[str, str] | None = None
) -> Reply:
    """:func:`render_error` for an error body made elsewhere (a framework's JSON error)."""
    own = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    return Reply(
        status,
        (*own, (b"content-type", JSON), (REQUEST_ID_HEADER, request_id.encode())),
        orjson.dumps({**body, "request_id": request_id}, option=orjson.OPT_SERIALIZE_NUMPY),
    )


def log_failed_request(method: Any, path: Any, status: int, error: Any, request_id: str) -> None:
    """The one log line of a failed request: INFO for 4xx, WARNING for 5xx."""
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "%s %s answered %d: %s (request_id=%s)",
        method,
        path,
        status,
        error,
        request_id,
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


def framework_detail(method: Any, path: Any, status: int) -> dict[str, Any]:
    """What a framework error (no route, wrong method, ...) concerned: status, method and path."""
    return {"status": status, "method": method, "path": path}
