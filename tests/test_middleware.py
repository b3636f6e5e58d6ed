"""The mounted app's ASGI middleware, on a small real Starlette app."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.platform.settings import SettingsError, get_settings
from service.transport.middleware import Admission, ConnectionRecycler, InFlightLimit, JsonErrors, Recycling


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
    app = ConnectionRecycler(echo_app(), Recycling(max_age_s=0.2))  # due after 0.15 to 0.25 s
    a, b = ("10.0.0.1", 5000), ("10.0.0.2", 5000)

    async def scenario() -> list[bool]:
        young = [closes(await get(app, a)) for _ in range(3)] + [closes(await get(app, b))]
        await asyncio.sleep(0.3)
        old = [closes(await get(app, a)), closes(await get(app, b))]
        reconnected = closes(await get(app, a))  # the same address again: a new connection
        return [*young, *old, reconnected]

    assert asyncio.run(scenario()) == [False, False, False, False, True, True, False]


def test_responses_are_otherwise_untouched():
    app = ConnectionRecycler(echo_app(), Recycling(max_age_s=0.01))

    async def scenario() -> list[httpx.Response]:
        first = await get(app, ("10.0.0.1", 1))
        await asyncio.sleep(0.05)
        return [first, await get(app, ("10.0.0.1", 1))]

    first, closing = asyncio.run(scenario())
    assert not closes(first) and closes(closing)
    for response in (first, closing):
        assert response.status_code == 200 and response.text == "ok" and response.headers["x-kept"] == "yes"


def test_connections_the_client_closed_are_forgotten():
    app = ConnectionRecycler(echo_app(), Recycling(max_age_s=0.05))

    async def scenario() -> None:
        for port in range(200):  # 200 one-request connections
            await get(app, ("10.0.0.1", port))
        await asyncio.sleep(0.1)
        await get(app, ("10.0.0.9", 1))  # a new connection, after the others' age

    asyncio.run(scenario())
    assert len(app.recycling.deadlines) == 1, "entries of long-gone connections were kept"


def test_recycling_is_paced_by_the_connections_held():
    # pace 1 above 4 connections: at most one close per (connections held) requests, however
    # many are past their age
    app = ConnectionRecycler(echo_app(), Recycling(max_age_s=0.05, pace=1, paced_above=4))
    clients = [("10.0.0.1", port) for port in range(8)]

    async def scenario() -> list[bool]:
        for client in clients:  # 8 connections, each with its deadline
            await get(app, client)
        await asyncio.sleep(0.1)  # all 8 past their age
        return [closes(await get(app, client)) for _ in range(2) for client in clients]

    closed = asyncio.run(scenario())
    # The first request past the age may close (8 requests were served since start); after
    # that, one close per 8 requests: 16 requests, 2 closes.
    assert sum(closed) == 2, closed
    assert closed[0], "a connection past its age, with the budget there, is closed"


@pytest.mark.parametrize("pace, paced_above", [(0, 4), (1, 8)])
def test_unpaced_recycling_closes_every_connection_past_its_age(pace, paced_above):
    # no pace, or no more connections than the pace starts at
    app = ConnectionRecycler(echo_app(), Recycling(max_age_s=0.05, pace=pace, paced_above=paced_above))
    clients = [("10.0.0.1", port) for port in range(8)]

    async def scenario() -> list[bool]:
        for client in clients:
            await get(app, client)
        await asyncio.sleep(0.1)
        return [closes(await get(app, client)) for client in clients]

    assert asyncio.run(scenario()) == [True] * 8


# --- admission control --------------------------------------------------------------------


def held_app(release: asyncio.Event) -> Starlette:
    """/hold answers once ``release`` is set; /metrics and / at once."""

    async def hold(_) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("held")

    async def at_once(_) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/hold", hold), Route("/metrics", at_once), Route("/", at_once)])


def test_requests_beyond_the_in_flight_limit_are_refused_at_once_with_retry_after():
    async def scenario():
        release = asyncio.Event()
        limited = InFlightLimit(held_app(release), Admission(limit=2, retry_after_s=3))
        transport = httpx.ASGITransport(app=limited)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            held = [asyncio.create_task(http.get("/hold")) for _ in range(2)]
            while limited.admission.in_flight < 2:  # both admitted and waiting
                await asyncio.sleep(0.001)
            refused = await http.post("/", content=b"x" * 10_000)
            metrics = await http.get("/metrics")  # exempt: always served
            release.set()
            answered = await asyncio.gather(*held)
            after = await http.get("/")
        return limited, refused, metrics, answered, after

    limited, refused, metrics, answered, after = asyncio.run(scenario())
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "3"
    assert refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert set(body) == {"error", "detail", "request_id"} and "overloaded" in body["error"]
    assert body["detail"]["limit_per_worker"] == 2 and body["detail"]["retry_after_s"] == 3
    assert metrics.status_code == 200
    assert [r.text for r in answered] == ["held", "held"]
    assert after.status_code == 200 and after.text == "ok"
    assert limited.admission.in_flight == 0


def test_a_refusal_gets_a_request_id_and_one_summary_log_line_not_one_per_request(caplog):
    async def scenario() -> list[httpx.Response]:
        release = asyncio.Event()
        limited = InFlightLimit(held_app(release), Admission(limit=1, log_every_s=3600))
        app = JsonErrors(limited)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            held = asyncio.create_task(http.get("/hold"))
            while limited.admission.in_flight < 1:
                await asyncio.sleep(0.001)
            refused = [await http.get("/", headers={"x-request-id": f"burst-{i}"}) for i in range(5)]
            release.set()
            await held
        return refused

    with caplog.at_level(logging.INFO, logger="service.transport.middleware"):
        refused = asyncio.run(scenario())
    assert [r.status_code for r in refused] == [503] * 5
    assert [r.json()["request_id"] for r in refused] == [f"burst-{i}" for i in range(5)]
    assert [r.headers["x-request-id"] for r in refused] == [f"burst-{i}" for i in range(5)]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "overloaded" in lines[0], lines


def test_a_failure_inside_still_frees_its_place():
    async def fail(_) -> PlainTextResponse:
        raise RuntimeError("boom")

    limited = InFlightLimit(Starlette(routes=[Route("/", fail)]), Admission(limit=1))

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=limited, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            for _ in range(3):
                assert (await http.get("/")).status_code == 500

    asyncio.run(scenario())
    assert limited.admission.in_flight == 0


def test_overload_settings_are_read_from_the_environment_and_checked(monkeypatch):
    get_settings.cache_clear()
    monkeypatch.setenv("MODELSERVE_MAX_INFLIGHT_PER_WORKER", "7")
    monkeypatch.setenv("MODELSERVE_RECYCLE_PACE", "0")
    try:
        settings = get_settings()
        assert (settings.max_inflight_per_worker, settings.recycle_pace) == (7, 0)
        get_settings.cache_clear()
        monkeypatch.setenv("MODELSERVE_MAX_INFLIGHT_PER_WORKER", "-1")
        with pytest.raises(SettingsError, match="MODELSERVE_MAX_INFLIGHT_PER_WORKER"):
            get_settings()
    finally:
        get_settings.cache_clear()
