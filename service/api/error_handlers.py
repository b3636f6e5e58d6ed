"""The app's exception handlers: every exception a route raises becomes the one error answer.

Each renders through ``service.platform.errors.render_error`` with the request id the
``JsonErrors`` middleware made current, and logs the failed request once.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.platform import request_ids
from service.platform.errors import ApiError, InternalError, framework_detail, log_failed_request
from service.transport.responses import error_response

log = logging.getLogger(__name__)


def answer_error(request: Request, error: ApiError) -> Response:
    """The answer to a request that failed with ``error``, and its log line."""
    request_id = request_ids.current()
    log_failed_request(request.method, request.url.path, error.status, error.error, request_id)
    return error_response(error, request_id)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):  # registered for ApiError only: anything else is a bug
        return await unexpected_error_handler(request, exc)
    return answer_error(request, exc)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (404 no such route, 405 wrong method) in the one error shape."""
    if not isinstance(exc, HTTPException):
        return await unexpected_error_handler(request, exc)
    error = ApiError(
        exc.detail or "HTTP error",
        framework_detail(request.method, request.url.path, exc.status_code),
        status=exc.status_code,
        headers=getattr(exc, "headers", None),
    )
    return answer_error(request, error)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    # The exception (its class, message and traceback) goes to the log only: it tells a
    # client nothing it can act on, and may tell an attacker how the server is built.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return answer_error(request, InternalError())
