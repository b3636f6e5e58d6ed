"""Starlette responses for the service's answers: JSON, and an error rendered once.

The error body and headers come from ``service.platform.errors.render_error``, the one
rendering every path shares; this module only frames it as a Starlette ``Response``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from service.platform.errors import ApiError, Reply, render_error


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; NumPy arrays in ``body`` are serialised directly."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, "application/json"
    )


# An overload refusal closes its connection, on both paths: the body is not read (that is what
# makes a refusal cheap), and the client's next try may land on a less busy worker.
CLOSE = (b"connection", b"close")


def framed_headers(reply: Reply, close: bool = False) -> list[tuple[bytes, bytes]]:
    """A reply's headers as sent through ASGI: its own, its length, and ``Connection: close``
    if asked, in the order the protocol writes an answer itself (``connections.http_answer``)."""
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    if close:
        headers.append(CLOSE)
    return headers


def rendered_response(reply: Reply) -> Response:
    """A Starlette response carrying a rendered answer exactly (headers in their order)."""
    response = Response(reply.body, reply.status)
    response.raw_headers = framed_headers(reply)
    return response


def error_response(error: ApiError, request_id: str) -> Response:
    """``error`` as a response: the one rendering, with the request id in body and header."""
    return rendered_response(render_error(error, request_id))
