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


def closes(response: httpx.Response) -> bool:
    return response.headers.get("connection") == "close"


async def get(app, client: tuple[str, int]) -> httpx.Response:
    """One request that the app sees as coming from ``client`` (one connection per address)."""
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.get("/")


def test_a_connection_is_asked_to_reconnect_once_it_is_past_its_age():
    app = ConnectionRecycler(echo_app(), max_age_s=0.2)  # due after 0.15 to 0.25 s
    a, b = ("10.0.0.1", 5000), ("10.0.0.2", 5000)

    async def scenario() -> list[bool]:
        young = [closes(await get(app, a)) for _ in range(3)] + [closes(await get(app, b))]
        await asyncio.sleep(0.3)
        old = [closes(await get(app, a)), closes(await get(app, b))]
        reconnected = closes(await get(app, a))  # the same address again: a new connection
        return [*young, *old, reconnected]

    assert asyncio.run(scenario()) == [False, False, False, False, True, True, False]


def test_responses_are_otherwise_untouched():
    app = ConnectionRecycler(echo_app(), max_age_s=0.01)

    async def scenario() -> list[httpx.Response]:
        first = await get(app, ("10.0.0.1", 1))
        await asyncio.sleep(0.05)
        return [first, await get(app, ("10.0.0.1", 1))]

    first, closing = asyncio.run(scenario())
    assert not closes(first) and closes(closing)
    for response in (first, closing):
        assert response.status_code == 200 and response.text == "ok" and response.headers["x-kept"] == "yes"


def test_connections_the_client_closed_are_forgotten():
    app = ConnectionRecycler(echo_app(), max_age_s=0.05)

    async def scenario() -> None:
        for port in range(200):  # 200 one-request connections
            await get(app, ("10.0.0.1", port))
        await asyncio.sleep(0.1)
        await get(app, ("10.0.0.9", 1))  # a new connection, after the others' age

    asyncio.run(scenario())
    assert len(app.deadlines) == 1, "entries of long-gone connections were kept"
