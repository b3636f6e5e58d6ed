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
from typing import Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service import schemas, v2
from service.errors import (
    ApiError,
    InvalidInput,
    UnsupportedMediaType,
    api_error_handler,
    http_error_handler,
    json_response,
    unexpected_error_handler,
)
from service.http import LeanRoute, guarded, openapi_body, read_json, registry_of
from service.images import digit_from_image
from service.metrics import exposition
from service.middleware import BodyLimit, ConnectionRecycler
from service.pipelines import Pipeline
from service.settings import get_settings

log = logging.getLogger(__name__)

# The routes whose per-request cost matters: BentoML's tracing middleware skips these
# prefixes, and the JSON-error middleware does not wrap the task routes.
TASK_ROUTES = frozenset({"/classify", "/classify_image", "/forecast", "/generate", "/metrics"})
INFERENCE_ROUTES = [*sorted(TASK_ROUTES), "/v2"]


def task_route(model: str) -> Callable:
    """Hand the handler ``model``'s pipeline, and count the handler's errors by status."""

    def decorate(handler: Callable[[Request, Pipeline], Awaitable[Response]]) -> Callable:
        async def route(request: Request) -> Response:
            return await guarded(request, registry_of(request).pipeline(model), handler)

        # Not functools.wraps: FastAPI would read the handler's signature and expect a body.
        route.__name__, route.__doc__ = handler.__name__, handler.__doc__
        return route

    return decorate


_MULTIPART_IMAGE = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG or JPEG, any size, dark digit on a light background",
                        }
                    },
                }
            }
        },
    }
}


# --- task endpoints ----------------------------------------------------------------------


@task_route("classifier")
async def classify(request: Request, pipeline: Pipeline) -> Response:
    body = await read_json(request, schemas.ClassifyRequest)
    return json_response(await pipeline.answer(body))


@task_route("classifier")
async def classify_image(request: Request, pipeline: Pipeline) -> Response:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "send the image as multipart/form-data in a field named 'image'",
            {"content_type": content_type},
        )
    try:
        form = await request.form(max_files=1, max_fields=4)
    except HTTPException as exc:  # malformed multipart
        raise InvalidInput(f"malformed multipart body: {exc.detail}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise InvalidInput("the form needs a file field named 'image'", {"field": "image"})
    digit = digit_from_image(await upload.read(), get_settings().max_image_pixels)
    return json_response(await pipeline.answer(schemas.UploadedDigit(digit)))


@task_route("forecaster")
async def forecast(request: Request, pipeline: Pipeline) -> Response:
    body = await read_json(request, schemas.ForecastRequest)
    return json_response(await pipeline.answer(body))


@task_route("generator")
async def generate(request: Request, pipeline: Pipeline) -> Response:
    body = await read_json(request, schemas.GenerateRequest)
    return json_response(await pipeline.answer(body))


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
    routes = [
        (
            "/classify",
            classify,
            schemas.ClassifyResponse,
            openapi_body(schemas.ClassifyRequest),
            "Classify 8x8 digit images (0..16 pixel values)",
        ),
        (
            "/classify_image",
            classify_image,
            schemas.ClassifyImageResponse,
            _MULTIPART_IMAGE,
            "Classify a PNG or JPEG of a handwritten digit",
        ),
        (
            "/forecast",
            forecast,
            schemas.ForecastResponse,
            openapi_body(schemas.ForecastRequest),
            "Forecast the next weeks of CO2 concentration from variable-length histories",
        ),
        (
            "/generate",
            generate,
            schemas.GenerateResponse,
            openapi_body(schemas.GenerateRequest),
            "Generate digit images of the given classes",
        ),
    ]
    for path, endpoint, response_model, extra, summary in routes:
        app.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            response_model=response_model,
            responses=errors,
            openapi_extra=extra,
            summary=summary,
            tags=["tasks"],
        )
        app.route_directly(path, endpoint)
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
