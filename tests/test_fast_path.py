"""The one fast path (service/transport/fast_path.py), in process: the service's real app, real models.

Middleware and exception handlers added the ordinary FastAPI way must reach the routes the
fast path serves, and what the fast path cannot honour must be refused when it is declared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import Depends, Request
from fastapi.routing import APIRoute, APIRouter
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import JSONResponse, Response

from service.api.routes import create_app
from service.inference.registry import ModelRegistry
from service.platform.errors import InvalidInput
from service.platform.settings import Settings
from service.transport.fast_path import FastPathApp, FastRoute
from service.transport.responses import json_response
from store_format import latest_version
from tests.conftest import COMMITTED_STORE
from tests.test_service import digit_images

IMAGE = digit_images(1)[0][0]
V2_IMAGE = {"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
# One request of each kind the fast path serves, and one it passes on to FastAPI (a 405).
REQUESTS = [
    ("POST", "/classify", {"json": {"images": [IMAGE]}}, 200),
    ("POST", "/v2/models/classifier/infer", {"json": V2_IMAGE}, 200),
    ("GET", f"/v2/models/classifier/versions/{latest_version(COMMITTED_STORE, 'classifier')}", {}, 200),
    ("GET", "/classify", {}, 405),
]


@pytest.fixture(scope="module")
def registry() -> Iterator[ModelRegistry]:
    settings = Settings(model_store=COMMITTED_STORE, models=["classifier"], workers=1)
    registry = ModelRegistry.load(settings)
    yield registry
    asyncio.run(registry.close())


@pytest.fixture
def app(registry) -> FastPathApp:
    app = create_app(Settings(model_store=COMMITTED_STORE, workers=1))
    app.state.registry = registry
    return app


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def one() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(one())


async def where_served(request: Request) -> Response:
    # Starlette's router marks the scope; the fast path does not pass through it.
    return json_response({"through_router": "router" in request.scope})


def test_fast_routes_bypass_fastapis_router_and_others_do_not(app):
    app.add_api_route("/probe", where_served, methods=["POST"])
    app.router.add_api_route("/ordinary", where_served, methods=["POST"], route_class_override=APIRoute)
    assert call(app, "POST", "/probe").json() == {"through_router": False}
    assert call(app, "POST", "/ordinary").json() == {"through_router": True}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"), REQUESTS, ids=[" ".join(r[:2]) for r in REQUESTS]
)
def test_middleware_added_the_fastapi_way_runs_on_every_route(app, method, path, kwargs, status):
    @app.middleware("http")
    async def tag(request: Request, call_next):
        response = await call_next(request)
        response.headers["x-seen-by"] = "http-middleware"
        return response

    class Counting:  # a plain ASGI middleware, added with add_middleware
        calls = 0

        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            Counting.calls += scope["type"] == "http"
            await self.app(scope, receive, send)

    app.add_middleware(Counting)
    response = call(app, method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["x-seen-by"] == "http-middleware"
    assert Counting.calls == 1


def test_an_exception_handler_added_the_fastapi_way_answers_the_fast_paths_errors(app):
    async def teapot(_: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"handled: {exc}"}, status_code=418)

    app.add_exception_handler(InvalidInput, teapot)
    v2 = call(app, "POST", "/v2/models/classifier/infer", json={"inputs": []})
    assert v2.status_code == 418 and v2.json()["error"].startswith("handled: ")
    # A task route answers through its one handler (service.api.handler), whichever path
    # carried it, so that the direct lane and ASGI cannot differ: its errors are rendered there.
    task = call(app, "POST", "/classify", json={"images": []})
    assert task.status_code == 400 and "request_id" in task.json()


def test_the_stack_is_assembled_at_start_up_and_later_middleware_is_refused(app):
    async def start() -> None:
        async with app.router.lifespan_context(app):  # as BentoML starts a mounted app
            assert app.middleware_stack is not None

    asyncio.run(start())
    with pytest.raises(RuntimeError, match="after an application has started"):
        app.add_middleware(GZipMiddleware)


def test_a_middleware_that_cannot_be_built_stops_start_up(app):
    class Broken:
        def __init__(self, app, limit: int) -> None:
            raise ValueError(f"bad limit {limit}")

    app.add_middleware(Broken, limit=-1)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ValueError, match="bad limit -1"):
        asyncio.run(start())


def current_user() -> str:
    return "someone"


async def with_query(request: Request, page: int = 1) -> Response:
    return json_response({"page": page})


async def with_body(request: Request, body: dict) -> Response:
    return json_response(body)


async def with_dependency(request: Request, user: str = Depends(current_user)) -> Response:
    return json_response({"user": user})


async def request_last(name: str, request: Request) -> Response:
    return json_response({"name": name})


@pytest.mark.parametrize(
    ("path", "endpoint", "says", "url", "kwargs", "answer"),
    [
        ("/q", with_query, "query parameter 'page'", "/q?page=3", {}, {"page": 3}),
        ("/b", with_body, "body parameter 'body'", "/b", {"json": {"a": 1}}, {"a": 1}),
        ("/d", with_dependency, "dependency current_user", "/d", {}, {"user": "someone"}),
        ("/n/{name}", request_last, "first parameter is not the Request", "/n/x", {}, {"name": "x"}),
    ],
    ids=["query", "body", "dependency", "request not first"],
)
def test_what_the_fast_path_would_skip_is_refused_when_the_route_is_declared(
    app, path, endpoint, says, url, kwargs, answer
):
    with pytest.raises(TypeError, match=says) as refused:
        app.add_api_route(path, endpoint, methods=["POST"])
    assert "route_class_override=APIRoute" in str(refused.value)
    # Declared as an ordinary FastAPI route instead, FastAPI serves it, parameters and all.
    app.router.add_api_route(path, endpoint, methods=["POST"], route_class_override=APIRoute)
    assert call(app, "POST", url, **kwargs).json() == answer


def test_route_level_dependencies_are_refused_too(app):
    with pytest.raises(TypeError, match="dependency current_user"):
        app.add_api_route("/x", where_served, methods=["POST"], dependencies=[Depends(current_user)])


def test_an_included_routers_routes_are_on_the_fast_path(app):
    probe = APIRouter(prefix="/probed", route_class=FastRoute)
    probe.add_api_route("/here", where_served, methods=["POST"])
    app.include_router(probe)
    assert call(app, "POST", "/probed/here").json() == {"through_router": False}
    # Served by FastAPI's router, a path parameter that breaks its documented pattern would get
    # FastAPI's 422 without the service's error shape; on the fast path the endpoint answers.
    answer = call(app, "GET", "/v2/models/classifier/versions/abc")
    assert answer.status_code == 404, answer.text
    assert set(answer.json()) >= {"error", "detail"}


def test_including_a_router_with_options_or_ordinary_routes_is_refused(app):
    with pytest.raises(TypeError, match="takes the router alone"):
        app.include_router(APIRouter(route_class=FastRoute), prefix="/x")
    ordinary = APIRouter()
    ordinary.add_api_route("/plain", where_served, methods=["POST"])
    with pytest.raises(TypeError, match="is not a FastRoute"):
        app.include_router(ordinary)
