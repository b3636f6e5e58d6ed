"""The HTTP routes: the task route table, its one handler, and the app that serves them.

A FastAPI app (:class:`~service.transport.fast_path.FastPathApp`), mounted into the BentoML service
(``service.bento_service``), so that BentoML merges its OpenAPI document into
``/docs.json``. Every route is a :class:`~service.transport.fast_path.FastRoute`: documented by
FastAPI, served directly by the app (``service.transport.fast_path`` says how and why).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.api import open_inference
from service.api.error_handlers import api_error_handler, http_error_handler, unexpected_error_handler
from service.api.handler import TaskHandler, task_endpoint
from service.api.request_bodies import BodyReader, JsonBody, PictureUpload
from service.inference import schemas
from service.inference.metrics import exposition
from service.platform.errors import ApiError
from service.platform.settings import Settings, get_settings
from service.transport.direct_lane import LaneParts
from service.transport.fast_path import FastPathApp
from service.transport.middleware import Admission, BodyLimit, ConnectionRecycler, InFlightLimit, Recycling


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


async def metrics(_: Request) -> Response:
    content, content_type = exposition()
    return Response(content, media_type=content_type)


# --- the app -------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastPathApp:
    """The service's routes, error handlers and middleware (``settings``: the process-wide ones).

    The task routes' one handler is ``app.state.task_handler``; what the direct lane shares with
    the ASGI path is ``app.state.lane_parts`` (``service.transport.direct_lane``).
    """
    settings = settings or get_settings()
    app = FastPathApp(
        title="modelserve",
        summary="Batched ONNX Runtime inference: digit classification, CO2 forecasting, digit generation",
        version="0.1.0",
        openapi_url=None,  # BentoML serves the merged document at /docs.json
        docs_url=None,
        redoc_url=None,
    )
    handler = TaskHandler(TASK_ROUTES, app.state, settings.http_timeout_s)
    errors = {
        400: {"model": schemas.ErrorResponse, "description": "invalid input"},
        **schemas.ERROR_RESPONSES,
    }
    for route in TASK_ROUTES:
        app.add_api_route(
            route.path,
            task_endpoint(handler, route.path),
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
    recycling = None
    if settings.worker_count > 1 and settings.max_connection_age_s:
        recycling = Recycling(settings.max_connection_age_s, pace=settings.recycle_pace)
        app.add_middleware(ConnectionRecycler, recycling=recycling)
    admission = None
    if settings.max_inflight_per_worker:  # added last: runs first, before anything reads the body
        admission = Admission(settings.max_inflight_per_worker, settings.overload_retry_after_s)
        app.add_middleware(InFlightLimit, admission=admission)
    app.state.task_handler = handler
    app.state.lane_parts = LaneParts(
        handler,
        tuple(route.path for route in TASK_ROUTES),
        settings.max_body_bytes,
        admission,
        recycling,
    )
    return app
