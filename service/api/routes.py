"""The HTTP routes: the task route table, its one handler, and the app that serves them.

A FastAPI app (:class:`~service.fast_path.FastPathApp`), mounted into the BentoML service
(``service.bento_service``), so that BentoML merges its OpenAPI document into
``/docs.json``. Every route is a :class:`~service.fast_path.FastRoute`: documented by
FastAPI, served directly by the app (``service.fast_path`` says how and why).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service import open_inference, schemas
from service.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    json_response,
    unexpected_error_handler,
)
from service.fast_path import FastPathApp
from service.metrics import exposition
from service.middleware import BodyLimit, ConnectionRecycler, InFlightLimit
from service.registry import registry_of
from service.request_bodies import BodyReader, JsonBody, PictureUpload
from service.settings import Settings, get_settings


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
# prefixes (matched anywhere in the URL).
INFERENCE_ROUTES = sorted({*(route.path for route in TASK_ROUTES), "/metrics", "/v2"})


def task_endpoint(route: TaskRoute) -> Callable[[Request], Awaitable[Response]]:
    """The one handler of every task route, bound to ``route``: FastAPI documents it per route."""
    model, read_body = route.model, route.body.read

    async def answer_task(request: Request) -> Response:
        # Read the body, then one call into the model's pipeline. (No docstring: FastAPI would
        # publish it as every task route's description.)
        pipeline = registry_of(request).pipeline(model)
        try:
            return json_response(await pipeline.answer(await read_body(request)))
        except Exception as exc:
            raise pipeline.failed(exc, request.url.path) from None

    return answer_task


async def metrics(_: Request) -> Response:
    content, content_type = exposition()
    return Response(content, media_type=content_type)


# --- the app -------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastPathApp:
    """The service's routes, error handlers and middleware (``settings``: the process-wide ones)."""
    settings = settings or get_settings()
    app = FastPathApp(
        title="modelserve",
        summary="Batched ONNX Runtime inference: digit classification, CO2 forecasting, digit generation",
        version="0.1.0",
        openapi_url=None,  # BentoML serves the merged document at /docs.json
        docs_url=None,
        redoc_url=None,
    )
    errors = {
        400: {"model": schemas.ErrorResponse, "description": "invalid input"},
        **schemas.ERROR_RESPONSES,
    }
    for route in TASK_ROUTES:
        app.add_api_route(
            route.path,
            task_endpoint(route),
            name=route.name,
            methods=["POST"],
            response_model=route.response,
            responses=errors,
            openapi_extra=route.body.openapi,
            summary=route.summary,
            tags=["tasks"],
        )
    app.include_router(open_inference.router)
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.worker_count > 1 and settings.max_connection_age_s:
        app.add_middleware(
            ConnectionRecycler,
            max_age_s=settings.max_connection_age_s,
            pace=settings.recycle_pace,
        )
    if settings.max_inflight_per_worker:  # added last: runs first, before anything reads the body
        app.add_middleware(
            InFlightLimit,
            limit=settings.max_inflight_per_worker,
            retry_after_s=settings.overload_retry_after_s,
        )
    return app
