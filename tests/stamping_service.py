"""The service with one more middleware at each level, added the ordinary way: each stamps a
header on every answer. tests/test_direct_lane.py serves it to check that such a middleware
applies to the task routes too (the direct lane turns itself off, and says so)."""

from __future__ import annotations

from service.bento_service import ModelService, app


class StampHeader:
    """ASGI middleware: ``header: yes`` on every answer."""

    def __init__(self, app, header: str) -> None:
        self.app = app
        self.header = header.encode()

    async def __call__(self, scope, receive, send) -> None:
        async def stamped(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (self.header, b"yes")]
            await send(message)

        await self.app(scope, receive, stamped if scope["type"] == "http" else send)


app.add_middleware(StampHeader, header="x-stamped-by-app")
ModelService.add_asgi_middleware(StampHeader, header="x-stamped-by-bentoml")

__all__ = ["ModelService"]
