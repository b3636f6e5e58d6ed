"""The direct lane: an ordinary JSON task request answered by the HTTP protocol, below ASGI.

Why: at 64 concurrent ``/classify`` clients on two cores, the ASGI layers a request crosses
(uvicorn's request cycle and its messages, BentoML's app with its context, timeout and
routing middleware, Starlette's request and response objects, the service's own middleware)
cost more CPU than parsing, validating, batching, running and encoding it together
(bench/pyspy_profile.py; the figures are in docs/benchmarks.md). For the requests that make
up almost all of the traffic, none of those layers changes the answer, so the connection's
protocol (``service.connections``) answers them itself, with the same code the task route
runs (``service.routes``): the body reader's schema, the model's pipeline, its metrics.

Which requests: ``POST`` to a JSON task route (``/classify``, ``/forecast``, ``/generate``),
HTTP/1.1, the exact path (no query string), a ``Content-Length`` within
``MODELSERVE_MAX_BODY_BYTES``, no ``Transfer-Encoding`` or ``Expect``, a JSON content type (or
none), while the connection is not draining and has no earlier request still unanswered.
Everything else goes through ASGI as before (``service.fast_path``), and so does a request
the lane took but cannot answer as a success: a body that is not valid, a model that is not
loaded, a worker at its in-flight limit. Such a request is handed to the ASGI app whole, with
the body already read, and gets exactly the answer the route gives (the same error, status
and log line). Only what happens after the request's items were queued for the model is
answered here: its result, or the route's 503 (queue full, timed out, shutting down) or 500,
rendered as the middleware would render it.

What the ASGI path does that the lane does too: the in-flight limit's count, the connection
recycling (``Connection: close`` when due), the request id (``X-Request-ID`` echoed or made,
in every error body and log line), the model's metrics, the 408/413/drain behaviour of the
connection (it is the protocol's). What it leaves out: BentoML's per-request context
(``bentoml.Context``, which the service does not use), BentoML's request timeout (the batch
queue timeout bounds the wait instead), and its tracing, which leaves these routes out anyway
(``tracing.excluded_urls``).

Nothing is skipped silently: the lane is used only if the app's middleware, BentoML's
middleware and the error handler are exactly the ones it stands in for. Any other (a
middleware added with ``app.add_middleware`` or ``ModelService.add_asgi_middleware``,
BentoML's access log, metrics or CORS switched on, another ``ApiError`` handler) turns the lane
off at the worker's first request, with a log line that names what did, and every request
then goes through ASGI. ``MODELSERVE_DIRECT_LANE=false`` turns it off by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel

from service import request_ids
from service.errors import ApiError, api_error_handler
from service.middleware import BodyLimit, ConnectionRecycler, InFlightLimit, log_failed_request
from service.request_bodies import JsonBody, json_media_type, parse

log = logging.getLogger(__name__)

# Middleware of BentoML's app that does not change a task route's answer (see the docstring);
# by class name, as BentoML and OpenTelemetry spell them.
_BENTOML_MIDDLEWARE_STOOD_IN_FOR = frozenset(
    {"ContextMiddleware", "TimeoutMiddleware", "OpenTelemetryMiddleware", "JsonErrors"}
)
_APP_MIDDLEWARE_STOOD_IN_FOR = (InFlightLimit, BodyLimit, ConnectionRecycler)


@dataclass(frozen=True)
class LaneRoute:
    """A task route the lane answers: its path, its model, its body's schema."""

    path: str
    model: str
    schema: type[BaseModel]


class Admitted(NamedTuple):
    """A request the lane answers: its model's pipeline, its validated body, its items."""

    pipeline: Any
    body: BaseModel
    items: list[Any]


@dataclass(frozen=True)
class Answer:
    """A whole answer, for the protocol to write: status, body, headers beyond the usual."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


class DirectLane:
    """Answers lane requests (see the module docstring) for one worker's app."""

    def __init__(
        self,
        app: Any,
        routes: Iterable[LaneRoute],
        body_limit: int,
        in_flight: InFlightLimit | None,
        recycler: ConnectionRecycler | None,
    ) -> None:
        self.app = app  # the FastPathApp: its state holds the registry
        self.routes = {route.path.encode(): route for route in routes}
        self.body_limit = body_limit
        self.in_flight = in_flight
        self.recycler = recycler

    # --- which requests -----------------------------------------------------------------------

    def route_for(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> LaneRoute | None:
        """The route if the lane may take this request (headers complete), else None."""
        if method != b"POST":
            return None
        route = self.routes.get(url)
        if route is None:
            return None
        length = -1
        for name, value in headers:
            if name == b"content-length":
                if length >= 0 or not value.isdigit():
                    return None  # repeated or odd: the ASGI path says what is wrong
                length = int(value)
            elif name in (b"transfer-encoding", b"expect") or (
                name == b"content-type" and json_media_type(value.decode("latin-1")) is None
            ):
                return None  # a streamed body, or one the ASGI path answers 415
        if not 0 < length <= self.body_limit:
            return None
        return route

    # --- answering ----------------------------------------------------------------------------

    def admit(self, route: LaneRoute, body: bytes) -> Admitted | None:
        """The request, if the lane can answer it, else None: the ASGI path then answers it
        (an invalid body, no model, the in-flight limit reached)."""
        registry = getattr(self.app.state, "registry", None)
        if registry is None:
            return None
        pipeline = registry.pipelines.get(route.model)
        if pipeline is None:
            return None
        in_flight = self.in_flight
        if in_flight is not None and in_flight.in_flight >= in_flight.limit:
            return None
        try:
            parsed = parse(body, route.schema)
            items = pipeline.decode(parsed)
        except Exception:  # the route's own answer says what is wrong, from the ASGI path
            return None
        return Admitted(pipeline, parsed, items)

    async def answer(self, route: LaneRoute, admitted: Admitted, method: str, request_id: str) -> Answer:
        """The answer to an admitted request: its results, or the route's error answer."""
        pipeline, parsed, items = admitted
        in_flight = self.in_flight
        if in_flight is not None:
            in_flight.in_flight += 1
        token = request_ids.CURRENT.set(request_id)
        try:
            payload = pipeline.encode(parsed, await pipeline.infer(items))
            return Answer(200, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
        except Exception as exc:
            return self._error_answer(pipeline.failed(exc, route.path), method, route.path, request_id)
        finally:
            request_ids.CURRENT.reset(token)
            if in_flight is not None:
                in_flight.in_flight -= 1

    def closes(self, client: tuple[str, int] | None) -> bool:
        """Whether this answer should close its connection, to rebalance (ConnectionRecycler)."""
        return self.recycler is not None and client is not None and self.recycler.due(client)

    @staticmethod
    def _error_answer(error: ApiError, method: str, path: str, request_id: str) -> Answer:
        """The answer api_error_handler and JsonErrors give together, and their log line."""
        body = {**error.body(), "request_id": request_id}
        log_failed_request(method, path, error.status, error.error, request_id)
        headers = tuple((k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items())
        return Answer(error.status, orjson.dumps(body), headers)


# --- set-up: once per worker, at its first request --------------------------------------------


def build(asgi_app: Any, app: Any, routes: Iterable[LaneRoute], enabled: bool) -> DirectLane | None:
    """The lane for ``app`` (the service's FastPathApp) served inside ``asgi_app`` (what uvicorn
    serves: BentoML's app), or None, logged, if it would skip something (module docstring)."""
    if not enabled:
        log.info("direct lane off (MODELSERVE_DIRECT_LANE=false): every request goes through ASGI")
        return None
    app.assemble()
    reasons = [
        *_unknown_bentoml_middleware(asgi_app),
        *_unknown_app_middleware(app),
    ]
    handler = app.exception_handlers.get(ApiError)
    if handler is not api_error_handler:
        reasons.append(f"ApiError is handled by {getattr(handler, '__name__', handler)}")
    if reasons:
        log.warning("direct lane off, every request goes through ASGI: it would skip %s", "; ".join(reasons))
        return None
    stack = list(_middleware_chain(app.middleware_stack))
    lane = DirectLane(
        app,
        routes,
        body_limit=next(m.limit for m in stack if isinstance(m, BodyLimit)),
        in_flight=next((m for m in stack if isinstance(m, InFlightLimit)), None),
        recycler=next((m for m in stack if isinstance(m, ConnectionRecycler)), None),
    )
    log.info("direct lane on for %s", ", ".join(r.decode() for r in lane.routes))
    return lane


def lane_routes(task_routes: Iterable[Any]) -> list[LaneRoute]:
    """The task routes whose bodies are JSON (``service.routes.TASK_ROUTES``)."""
    return [
        LaneRoute(route.path, route.model, route.body.schema)
        for route in task_routes
        if isinstance(route.body, JsonBody)
    ]


def _unknown_bentoml_middleware(asgi_app: Any) -> list[str]:
    starlette_app = _find_starlette(asgi_app)
    if starlette_app is None:
        return [f"an ASGI app it does not know ({type(asgi_app).__name__})"]
    names = [getattr(m.cls, "__name__", str(m.cls)) for m in starlette_app.user_middleware]
    unknown = [name for name in names if name not in _BENTOML_MIDDLEWARE_STOOD_IN_FOR]
    if "JsonErrors" not in names:
        unknown.append("the absence of JsonErrors (the request ids)")
    return [f"BentoML's middleware {name}" for name in unknown]


def _unknown_app_middleware(app: Any) -> list[str]:
    unknown = [m.cls for m in app.user_middleware if m.cls not in _APP_MIDDLEWARE_STOOD_IN_FOR]
    found = [m.cls for m in app.user_middleware]
    if BodyLimit not in found:
        unknown.append("the absence of BodyLimit")
    return [f"the app's middleware {getattr(cls, '__name__', cls)}" for cls in unknown]


def _find_starlette(asgi_app: Any) -> Any:
    """BentoML's Starlette app inside uvicorn's wrappers (ProxyHeadersMiddleware)."""
    for layer in _middleware_chain(asgi_app):
        if hasattr(layer, "user_middleware"):
            return layer
    return None


def _middleware_chain(app: Any) -> Iterable[Any]:
    seen = 0
    while app is not None and seen < 32:
        yield app
        app, seen = getattr(app, "app", None), seen + 1
