"""Request plumbing shared by the task routes and the V2 routes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

from service.errors import ApiError
from service.pipelines import Pipeline
from service.registry import ModelRegistry

log = logging.getLogger(__name__)


def registry_of(request: Request) -> ModelRegistry:
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise ApiError("the service is starting", status=503, headers={"Retry-After": "1"})
    return registry


async def guarded(
    request: Request, pipeline: Pipeline, handler: Callable[[Request, Pipeline], Awaitable[Response]]
) -> Response:
    """Run ``handler``, counting its errors in ``pipeline``'s metrics; a bug becomes a JSON 500."""
    try:
        return await handler(request, pipeline)
    except Exception as exc:
        raise pipeline.failed(exc, request.url.path) from None


class LeanRoute(APIRoute):
    """A route documented by FastAPI (OpenAPI schema, examples) but served like a plain
    Starlette route: the endpoint gets the ``Request`` and its path parameters and returns a
    ``Response``. FastAPI's dependency solving and response handling are skipped; on the
    request path they cost about a third of a small request's CPU (docs/benchmarks.md)."""

    def __init__(self, path: str, endpoint: Callable[..., Awaitable[Response]], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)

        async def serve(request: Request) -> Response:
            return await endpoint(request, **request.path_params)

        self.app = request_response(serve)
