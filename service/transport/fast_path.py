"""The ASGI side's fast path: FastAPI documents the routes, and the app serves them directly.

Why: on a small request, FastAPI's parameter solving and response serialisation would
double the CPU a request costs, and its middleware stack, its router (which tries each
route's pattern in turn) and its route layer cost about a tenth more (measured with
bench/pyspy_profile.py; see docs/evidence/benchmarks.md). The service's endpoints need none of it:
they take the ``Request`` and its path parameters, read and validate their bodies
themselves (``service.api.request_bodies``), and return a ready ``Response``.

How, in full:

* Routes are declared the ordinary FastAPI way (``app.add_api_route``, ``APIRouter``)
  with :class:`FastRoute` as their class (the default route class of a
  :class:`FastPathApp`). FastAPI puts them, their schemas and examples in the OpenAPI
  document, which BentoML merges into ``/docs.json``.
* :class:`FastPathApp` serves a request for a fast route itself: it finds the route by
  path and method (a dict lookup for fixed paths; for paths with parameters, the patterns
  of that method's routes), calls ``endpoint(request, **path_params)``, and answers what
  the endpoint raises with the app's exception handlers.
* Every other request (a wrong method, any route of another class) goes through FastAPI
  as usual.
* Routers are included route by route (:meth:`FastPathApp.include_router`): FastAPI keeps
  an included router as one lazy node that the fast path's index cannot see into.
* Middleware added the ordinary way (``app.add_middleware``, ``@app.middleware("http")``)
  wraps both paths, in the usual order (the last added runs first). Exception handlers
  added the ordinary way (``app.add_exception_handler``, ``@app.exception_handler``) answer
  the fast path's errors as they answer FastAPI's.
* What the fast path cannot honour fails loudly instead of being skipped: a
  :class:`FastRoute` refuses, when it is declared, an endpoint that asks FastAPI for
  anything but the request and path parameters (dependencies, query, header, cookie or
  body parameters). The middleware stack is assembled at start-up, so a middleware that
  cannot be built stops the server then, and one added later is refused (Starlette's
  "Cannot add middleware after an application has started").
* FastAPI's own OpenTelemetry instrumentation is off: BentoML traces requests
  (``tracing.excluded_urls`` in ``service.bento_service`` leaves the hot routes out).

Below this app, ``service.transport.direct_lane`` answers the task routes' ordinary requests in
the HTTP protocol, without ASGI, through the same task handler (``service.api.handler``) that
this app's task endpoints call. It stands in for exactly the middleware ``service.api.routes``
and ``service.bento_service`` add; any other middleware leaves it off from a worker's start,
with a log line, so that it applies here as above.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.transport.hooks import Hook, missing_attributes

Endpoint = Callable[..., Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]

_NO_PATH_PARAMS: dict[str, Any] = {}


class FastRoute(APIRoute):
    """A route FastAPI documents and :class:`FastPathApp` serves: ``endpoint(request, **path_params)``.

    The endpoint returns a ``Response``. If FastAPI's router ever reaches the route (a
    request the fast path passed on), it is served the same way.
    """

    def __init__(self, path: str, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self._refuse_what_the_fast_path_skips()
        self.app = self._serve_from_router

    def _refuse_what_the_fast_path_skips(self) -> None:
        dependant = self.dependant
        asks = [
            *(f"dependency {d.call.__name__ if d.call else d}" for d in dependant.dependencies),
            *(f"query parameter {p.name!r}" for p in dependant.query_params),
            *(f"header parameter {p.name!r}" for p in dependant.header_params),
            *(f"cookie parameter {p.name!r}" for p in dependant.cookie_params),
            *(f"body parameter {p.name!r}" for p in dependant.body_params),
        ]
        for special in ("response", "background_tasks", "security_scopes", "websocket"):
            name = getattr(dependant, f"{special}_param_name", None)
            if name:
                asks.append(f"{special.replace('_', ' ')} parameter {name!r}")
        first = next(iter(inspect.signature(self.endpoint).parameters), None)
        if dependant.request_param_name is None or first != dependant.request_param_name:
            asks.append("a signature whose first parameter is not the Request")
        if asks:
            raise TypeError(
                f"route {self.path} ({self.name}): a FastRoute endpoint takes the Request first, then "
                f"path parameters only, and returns a Response; it has {', '.join(asks)}. Read the "
                "body in the endpoint (service.api.request_bodies), or have FastAPI serve the route, at "
                "FastAPI's cost: app.router.add_api_route(..., route_class_override=APIRoute), or an "
                "APIRouter(route_class=APIRoute)."
            )

    async def _serve_from_router(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = scope.get("path_params", _NO_PATH_PARAMS)
        own = {name: params[name] for name in self.param_convertors}  # not a Mount's
        await scope["app"].serve(self, own, scope, receive, send)


@contextlib.asynccontextmanager
async def _assemble_at_startup(app: FastPathApp) -> AsyncIterator[None]:
    app.assemble()
    yield


class FastPathApp(FastAPI):
    """FastAPI, serving its :class:`FastRoute` routes directly (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("lifespan", _assemble_at_startup)
        kwargs.setdefault("telemetry", {"tracing": False, "metrics": False, "logs": False})
        super().__init__(**kwargs)
        self.router.route_class = FastRoute
        self._fixed: dict[str, dict[str, FastRoute]] = {}  # path -> method -> route
        self._patterns: dict[str, list[FastRoute]] = {}  # method -> routes with path parameters
        self._fastapi: ASGIApp | None = None  # FastAPI's own stack, for everything else

    def include_router(self, router: APIRouter, **options: Any) -> None:
        """Add ``router``'s routes to the app itself, so that its :class:`FastRoute` routes are fast.

        FastAPI keeps an included router as one node that resolves its routes lazily, out of
        sight of the fast path's index: included that way, a FastRoute would be served through
        FastAPI's router, with FastAPI's parameter validation and error answers. The router's
        own prefix, tags and responses are already part of each of its routes.
        """
        if options:
            raise TypeError(
                f"FastPathApp.include_router takes the router alone, not {sorted(options)}: set the "
                "prefix, tags and responses on the APIRouter itself"
            )
        for route in router.routes:
            if not isinstance(route, FastRoute):
                raise TypeError(
                    f"route {getattr(route, 'path', route)!r} of an included router is not a FastRoute: "
                    "declare the router with APIRouter(route_class=FastRoute), or add the route to the "
                    "app with app.router.add_api_route(..., route_class_override=APIRoute)"
                )
            self.router.routes.append(route)
        self.router._mark_routes_changed()  # FastAPI's route caches

    def assemble(self) -> None:
        """Build the middleware stack and index the fast routes (at start-up, or at the first call)."""
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()

    def build_middleware_stack(self) -> ASGIApp:
        self._index_fast_routes()
        user_middleware, self.user_middleware = self.user_middleware, []
        try:
            self._fastapi = super().build_middleware_stack()
        finally:
            self.user_middleware = user_middleware
        app: ASGIApp = self._dispatch
        for cls, args, kwargs in reversed(user_middleware):
            app = cls(app, *args, **kwargs)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await super().__call__(scope, receive, send)
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self
        if self.middleware_stack is None:
            self.assemble()
        await self.middleware_stack(scope, receive, send)  # type: ignore[misc]

    async def serve(
        self, route: FastRoute, path_params: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Answer a request for ``route``: its endpoint's response, or its exception handler's."""
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request, **path_params)
        except Exception as exc:
            handler = self.exception_handler_for(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def exception_handler_for(self, exc: Exception) -> ExceptionHandler | None:
        """The handler Starlette would pick: by status for HTTPExceptions, else by class (MRO)."""
        handlers = self.exception_handlers
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return handlers.get(500)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = get_route_path(scope), scope["method"]
            by_method = self._fixed.get(path)
            if by_method is not None:
                route, path_params = by_method.get(method), _NO_PATH_PARAMS
            else:
                route, path_params = self._match_pattern(path, method)
            if route is not None:
                # serve(), written out: the request path is a coroutine shorter.
                request = Request(scope, receive)
                try:
                    response = await route.endpoint(request, **path_params)
                except Exception as exc:
                    handler = self.exception_handler_for(exc)
                    if handler is None:
                        raise
                    response = await handler(request, exc)
                return await response(scope, receive, send)
        await self._fastapi(scope, receive, send)  # type: ignore[misc]

    def _match_pattern(self, path: str, method: str) -> tuple[FastRoute | None, dict[str, Any]]:
        for route in self._patterns.get(method, ()):
            match = route.path_regex.match(path)
            if match is not None:
                convertors = route.param_convertors
                params = {name: convertors[name].convert(text) for name, text in match.groupdict().items()}
                return route, params
        return None, _NO_PATH_PARAMS

    def _index_fast_routes(self) -> None:
        self._fixed, self._patterns = {}, {}
        for route in self.routes:
            if not isinstance(route, FastRoute):
                continue
            for method in route.methods:
                if route.param_convertors:
                    self._patterns.setdefault(method, []).append(route)
                else:
                    self._fixed.setdefault(route.path, {}).setdefault(method, route)


# --- the hooks (service.transport.hooks): what this module relies on, checked -----------------

_DEPENDANT_FIELDS = (
    "dependencies",
    "query_params",
    "header_params",
    "cookie_params",
    "body_params",
    "request_param_name",
    "response_param_name",
    "background_tasks_param_name",
    "security_scopes_param_name",
    "websocket_param_name",
)


def _fastapi_internals() -> str | None:
    """What FastRoute and FastPathApp use of FastAPI and Starlette beyond their public API."""
    from fastapi.dependencies.models import Dependant

    async def endpoint(request: Request) -> Response:  # never called
        return Response()

    app = FastAPI()
    route = APIRoute("/{name}", endpoint)
    return (
        missing_attributes(Dependant(), _DEPENDANT_FIELDS)
        or missing_attributes(app.router, ("_mark_routes_changed", "routes", "route_class"))
        or missing_attributes(
            app, ("build_middleware_stack", "middleware_stack", "user_middleware", "exception_handlers")
        )
        or missing_attributes(route, ("dependant", "param_convertors", "path_regex", "methods", "endpoint"))
    )


FASTAPI_HOOKS = (Hook("FastAPI internals used by the fast path", "fastapi", _fastapi_internals),)
