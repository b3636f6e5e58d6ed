"""The one handler of every task request, whichever adapter brought it.

A task request is (route, body bytes, content type, request id); its answer is a
``service.platform.errors.Reply`` (status, headers, body). :class:`TaskHandler` makes one
from the other: read the body with the route's reader, one call to the model's
``Pipeline.answer``, encode the result, or render the error and log it. Two adapters
call it and add nothing but framing:

- the ASGI endpoint (:func:`task_endpoint`), which FastAPI documents and the app serves
  (``service.transport.fast_path``), for every request the direct lane does not take;
- the direct lane (``service.transport.direct_lane``), which answers ordinary JSON task
  requests inside the HTTP protocol, below ASGI, because the ASGI layers cost more CPU than
  the model on small requests (docs/batching.md).

So the two paths cannot drift apart: tests/test_one_handler.py sends one corpus through both
and compares the answers byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.inference.registry import ModelRegistry
from service.platform import request_ids
from service.platform.deadlines import Deadlines
from service.platform.errors import (
    JSON,
    REQUEST_ID_HEADER,
    ApiError,
    Reply,
    Timeout,
    Unavailable,
    log_failed_request,
    render_error,
)
from service.transport.responses import rendered_response

_JSON_HEADER = (b"content-type", JSON)
_STARTING = Unavailable("the service is starting", retry_after_s=1)


class TaskHandler:
    """Answers task requests for the routes it is given (path -> model and body reader).

    ``state`` is the app's state, where the service puts this worker's model registry once
    it is loaded; until then every request is answered 503. A request not answered within
    ``deadline_s`` (``MODELSERVE_HTTP_TIMEOUT_S``) is answered 504: here, so that both paths
    give the same 504 (BentoML's own timeout, outside the service's middleware, is a backstop
    a second later).
    """

    def __init__(self, routes: Iterable[Any], state: Any, deadline_s: float) -> None:
        self.routes = {route.path: (route.model, route.body) for route in routes}
        self.state = state
        self._deadlines = Deadlines(deadline_s)
        self._late = Timeout(deadline_s)

    async def answer(
        self, path: str, body: bytes, content_type: str | None, request_id: str, method: str = "POST"
    ) -> Reply:
        """The answer to a task request (the route at ``path`` must be one of this handler's)."""
        model, reader = self.routes[path]
        registry: ModelRegistry | None = getattr(self.state, "registry", None)
        try:
            if registry is None:
                raise _STARTING
            pipeline = registry.pipeline(model)
        except ApiError as error:  # no model to count it against
            return _failed(error, method, path, request_id)
        # Refused before the body is parsed, so that a refusal costs little (it is read already:
        # the connection stays open for the client's next try).
        refusal = pipeline.overloaded()
        if refusal is not None:
            return _failed(pipeline.failed(refusal, path), method, path, request_id)
        bucket = self._deadlines.enter()
        try:
            payload = await pipeline.answer(await reader.read(body, content_type))
        except asyncio.CancelledError:
            if not self._deadlines.expired():
                raise  # the client left, or the server stops
            return _failed(pipeline.failed(self._late, path), method, path, request_id)
        except Exception as exc:
            return _failed(pipeline.failed(exc, path), method, path, request_id)
        finally:
            self._deadlines.leave(bucket)
        return Reply(
            200,
            (_JSON_HEADER, (REQUEST_ID_HEADER, request_id.encode())),
            orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        )


def _failed(error: ApiError, method: str, path: str, request_id: str) -> Reply:
    log_failed_request(method, path, error.status, error.error, request_id)
    return render_error(error, request_id)


def task_endpoint(handler: TaskHandler, path: str) -> Callable[[Request], Awaitable[Response]]:
    """The ASGI adapter of ``handler`` for the route at ``path``: FastAPI documents it per route."""
    answer = handler.answer

    async def answer_task(request: Request) -> Response:
        # The body whole (BodyLimit bounds it), then the one handler. (No docstring: FastAPI
        # would publish it as every task route's description.)
        reply = await answer(
            path,
            await request.body(),
            request.headers.get("content-type"),
            request_ids.current(),
            request.method,
        )
        return rendered_response(reply)

    return answer_task


def registry_of(request: Request) -> ModelRegistry:
    """The registry the service put in the app's state (503 while the service is starting)."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise _STARTING
    return registry
