"""ASGI middleware of the mounted app: the body size limit and connection recycling."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, json_response


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
    """Every ``every``-th response of this worker carries ``Connection: close``.

    BentoML's workers accept from one shared listening socket, and the worker that wakes
    first takes every connection waiting in the backlog: a burst of keep-alive connections
    can land 16/0 on two workers and leave a core idle for as long as the clients stay
    connected. A client told to close reconnects, and its new connection most often goes to
    the least busy worker, the one waiting for work; so the split evens out within seconds
    and follows the load after that. The same idea as nginx's ``keepalive_requests`` or
    gRPC's ``MAX_CONNECTION_AGE``; one reconnect per ``every`` requests costs next to nothing.
    """

    def __init__(self, app: ASGIApp, every: int) -> None:
        assert every >= 1, f"recycle every >= 1 responses, got {every}"
        self.app = app
        self.every = every
        self.countdown = every

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.countdown -= 1
        if self.countdown > 0:
            return await self.app(scope, receive, send)
        self.countdown = self.every

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)
