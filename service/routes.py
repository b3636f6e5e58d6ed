"""The HTTP routes: a thin layer from requests to pipelines and back.

A FastAPI app, mounted into the BentoML service (``service.bento_service``), so that BentoML
merges its OpenAPI document into ``/docs.json``. Handlers take the raw ``Request`` and
validate bodies themselves with the schemas' compiled validators: FastAPI's parameter
injection and response serialisation would double the per-request CPU (see
docs/benchmarks.md), and the OpenAPI document is described explicitly instead. POSTs to
the task routes skip FastAPI's middleware and router as well (:class:`ServiceApp`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service import schemas, v2
from service.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    json_response,
    unexpected_error_handler,
)
from service.http import LeanRoute, registry_of
from service.metrics import exposition
from service.middleware import BodyLimit, ConnectionRecycler
from service.request_bodies import BodyReader, JsonBody, PictureUpload
from service.settings import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRoute:
    """One task endpoint: its path, the model that answers it, and how its body is read."""

    path: str
    model: str  # the name of the model (in the registry) whose pipeline answers
    body: BodyReader
    response: type[BaseModel]  # documented in the OpenAPI document; the pipeline encodes it
    summary: str

    @property
    def name(self) -> str:
        return self.path.strip("/")


# The route table. A new kind of model: one line here, and one pipeline class.
TASK_ROUTES: tuple[TaskRoute, ...] = (
    TaskRoute(
        "/classify",
        "classifier",
        JsonBody(schemas.ClassifyRequest),
        schemas.ClassifyResponse,
        "Classify 8x8 digit images (0..16 pixel values)",
    ),
    TaskRoute(
        "/classify_image",
        "classifier",
        PictureUpload(),
        schemas.ClassifyImageResponse,
        "Classify a PNG or JPEG of a handwritten digit",
    ),
    TaskRoute(
        "/forecast",
        "forecaster",
        JsonBody(schemas.ForecastRequest),
        schemas.ForecastResponse,
        "Forecast the next weeks of CO2 concentration from variable-length histories",
    ),
    TaskRoute(
        "/generate",
        "generator",
        JsonBody(schemas.GenerateRequest),
        schemas.GenerateResponse,
        "Generate digit images of the given classes",
    ),
)

# The routes whose per-request cost matters: BentoML's tracing middleware skips these
# prefixes, and the JSON-error middleware does not wrap the task routes.
TASK_PATHS = frozenset({*(route.path for route in TASK_ROUTES), "/metrics"})
INFERENCE_ROUTES = [*sorted(TASK_PATHS), "/v2"]


async def answer_task(request: Request, route: TaskRoute) -> Response:
    """The handler of every task route: read the body, then one call into the model's pipeline."""
    pipeline = registry_of(request).pipeline(route.model)
    try:
        body = await route.body.read(request)
        return json_response(await pipeline.answer(body))
    except Exception as exc:
        raise pipeline.failed(exc, request.url.path) from None


def task_endpoint(route: TaskRoute) -> Callable[[Request], Awaitable[Response]]:
    """``answer_task`` bound to ``route``, as the endpoint FastAPI documents."""

    async def endpoint(request: Request) -> Response:
        # (No docstring: FastAPI would publish it as the route's description.)
        return await answer_task(request, route)

    return endpoint


async def metrics(_: Request) -> Response:
    content, content_type = exposition()
    return Response(content, media_type=content_type)


# --- the app -------------------------------------------------------------------------------


class ServiceApp(FastAPI):
    """FastAPI, with a short path for the task routes.

    FastAPI documents every route and serves all but the task routes. A POST to a task route
    goes straight to its handler instead: FastAPI's own middleware, router and route layers
    cost about a tenth of a small request's CPU (bench/pyspy_profile.py), and the task
    handlers need none of them, as they parse their bodies and answer their errors
    themselves. Middleware given to :meth:`wrap` runs on both paths.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct_routes: dict[str, Callable[[Request], Awaitable[Response]]] = {}
        self._entry: ASGIApp = self._dispatch

    def route_directly(self, path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.direct_routes[path] = endpoint

    def wrap(self, middleware: Callable[..., ASGIApp], **options: Any) -> None:
        """Run ``middleware`` around every request; the last one wrapped runs first."""
        self._entry = middleware(self._entry, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.direct_routes.get(get_route_path(scope))
        if endpoint is None:
            return await super().__call__(scope, receive, send)
        scope["app"] = self
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except ApiError as exc:
            response = await api_error_handler(request, exc)
        except Exception as exc:  # a bug: still a JSON 500, as on FastAPI's path
            response = await unexpected_error_handler(request, exc)
        await response(scope, receive, send)


def create_app() -> ServiceApp:
    app = ServiceApp(
        title="modelserve",
        summary="Batched ONNX Runtime inference: digit classification, CO2 forecasting, digit generation",
        version="0.1.0",
        openapi_url=None,  # BentoML serves the merged document at /docs.json
        docs_url=None,
        redoc_url=None,
    )
    app.router.route_class = LeanRoute
    errors = {
        400: {"model": schemas.ErrorResponse, "description": "invalid input"},
        **schemas.ERROR_RESPONSES,
    }
    for route in TASK_ROUTES:
        endpoint = task_endpoint(route)
        app.add_api_route(
            route.path,
            endpoint,
            name=route.name,
            methods=["POST"],
            response_model=route.response,
            responses=errors,
            openapi_extra=route.body.openapi,
            summary=route.summary,
            tags=["tasks"],
        )
        app.route_directly(route.path, endpoint)
    app.include_router(v2.router)
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    settings = get_settings()
    app.wrap(BodyLimit, limit=settings.max_body_bytes)
    if settings.worker_count > 1 and settings.max_connection_age_s:
        app.wrap(ConnectionRecycler, max_age_s=settings.max_connection_age_s)
    return app
