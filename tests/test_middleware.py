"""The mounted app's ASGI middleware, on a small real Starlette app."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.middleware import ConnectionRecycler


def echo_app() -> Starlette:
    async def echo(_) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"x-kept": "yes"})

    return Starlette(routes=[Route("/", echo)])


def test_every_nth_response_asks_the_client_to_reconnect():
    app = ConnectionRecycler(echo_app(), every=3)

    async def send_ten() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get("/") for _ in range(10)]

    responses = asyncio.run(send_ten())
    closing = [i for i, r in enumerate(responses, start=1) if r.headers.get("connection") == "close"]
    assert closing == [3, 6, 9]
    # The response itself is untouched.
    assert all(r.status_code == 200 and r.text == "ok" and r.headers["x-kept"] == "yes" for r in responses)
