"""The service's ASGI middleware: body size limit, connection recycling, request ids, JSON errors.

:class:`BodyLimit` and :class:`ConnectionRecycler` wrap every route of the service's app
(added with ``app.add_middleware`` in ``service.routes``); :class:`JsonErrors` wraps the
whole BentoML app, whose own answers (unknown paths, ``/readyz``) are plain text, and
stamps every answer with its request id.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import request_ids
from service.errors import PayloadTooLarge, framework_detail, json_response
from service.request_ids import request_id_of

log = logging.getLogger(__name__)

# What explains an error at a path: {"error": <replacing the framework's text>, "detail": {...}}.
Explanation = Callable[[], dict[str, Any]]


class BodyLimit:
    """413 for a body over ``limit`` bytes: at once from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and int(value or 0) > self.limit:
                response = json_response(self._error(int(value)).body(), 413)
                return await response(scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise self._error(received)
            return message

        await self.app(scope, limited_receive, send)

    def _error(self, size: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body ({size} bytes or more) is over the limit of "
            f"{self.limit} bytes (MODELSERVE_MAX_BODY_BYTES)",
            {"limit": self.limit},
        )


class ConnectionRecycler:
    """Closes each keep-alive connection once it is about ``max_age_s`` old.

    BentoML's workers accept from one shared listening socket, and the worker that wakes
    first takes every connection waiting in the backlog: a burst of keep-alive connections
    can land 16/0 on two workers and leave a core idle for as long as the clients stay
    connected. Here a connection's first response after its age (``max_age_s``, +-25% so
    that a burst of connections does not come due at once) carries ``Connection: close``;
    the client reconnects, and the new connection goes to either worker, most often to the
    less busy one, the one waiting for work. A worker holding more connections closes more
    of them per second, so the split evens out within a few ages, and follows the load
    after that. gRPC's ``MAX_CONNECTION_AGE`` does the same for the same reason.

    Connections are told apart by the client address and port; entries of connections the
    client closed itself are forgotten once past their age.
    """

    def __init__(self, app: ASGIApp, max_age_s: float) -> None:
        assert max_age_s > 0, f"max_age_s must be > 0, got {max_age_s}"
        self.app = app
        self.max_age_s = max_age_s
        self.deadlines: dict[tuple[str, int], float] = {}  # client (host, port) -> when to close
        self.next_sweep = 0.0
        self.random = random.Random()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or client is None:
            return await self.app(scope, receive, send)
        now = time.monotonic()
        deadline = self.deadlines.get(client)
        if deadline is None:
            self._forget_expired(now)
            self.deadlines[client] = now + self.max_age_s * self.random.uniform(0.75, 1.25)
        if deadline is None or now < deadline:
            return await self.app(scope, receive, send)
        del self.deadlines[client]

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)

    def _forget_expired(self, now: float) -> None:
        """At most once per age: drop connections past their deadline (most closed already)."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + self.max_age_s
        for client in [c for c, deadline in self.deadlines.items() if deadline <= now]:
            del self.deadlines[client]


class JsonErrors:
    """Stamps every response with its request id, and makes every error a JSON object with it.

    Every response gets ``X-Request-ID`` (``service.request_ids``: the client's, or one made
    here), and the id is the current one for the log while the request is handled. An error
    answer (4xx, 5xx) gets ``"request_id"`` in its body and one log line naming the request
    (INFO for 4xx, WARNING for 5xx). The framework's plain-text errors (404, 405, 503 from
    /readyz, ...) become ``{"error": <their text>, "detail": {status, method, path}}``, the
    shape of every other error.

    Successful answers pay for the id and one header (about a microsecond per request);
    only errors are buffered and rewritten.
    """

    def __init__(self, app: ASGIApp, explain: Mapping[str, Explanation] | None = None) -> None:
        self.app = app
        # Path -> what says more about an error at that path than the framework's text
        # (/readyz: which models or workers are not ready); it may replace "error" and add to
        # "detail".
        self.explain = dict(explain or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = request_id_of(scope["headers"])
        id_header = (request_ids.HEADER, request_id.encode())
        start: Message | None = None
        chunks: list[bytes] = []

        async def stamp(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    message["headers"] = [*message.get("headers", ()), id_header]
                    return await send(message)
                start = message
                return None
            if start is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return None
            body = self._error_body(scope, start, b"".join(chunks), request_id)
            headers = [
                (k, v) for k, v in start["headers"] if k.lower() not in (b"content-type", b"content-length")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                id_header,
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return None

        token = request_ids.CURRENT.set(request_id)
        try:
            await self.app(scope, receive, stamp)
        finally:
            request_ids.CURRENT.reset(token)

    def _error_body(self, scope: Scope, start: Message, body: bytes, request_id: str) -> bytes:
        """The error's JSON object with ``request_id``; logs the failed request."""
        status = start["status"]
        answer = _json_object(body) if _is_json(start["headers"]) else None
        if answer is None:
            text = body.decode("utf-8", "replace").strip() or "error"
            answer = {"error": text, "detail": framework_detail(scope, status)}
            explanation = self.explain.get(scope["path"])
            if explanation is not None:
                more = explanation()
                answer = {
                    "error": more.get("error", text),
                    "detail": {**answer["detail"], **more.get("detail", {})},
                }
        answer["request_id"] = request_id
        log.log(
            logging.WARNING if status >= 500 else logging.INFO,
            "%s %s answered %d: %s (request_id=%s)",
            scope.get("method"),
            scope.get("path"),
            status,
            answer.get("error"),
            request_id,
        )
        return json.dumps(answer).encode()


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and b"json" in v for k, v in headers)
