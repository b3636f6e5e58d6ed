"""The direct lane: task requests answered inside the HTTP protocol, below ASGI.

How a task request travels. The connection's protocol (``service.transport.connections``)
parses it. If the lane takes it (below), the protocol reads its body and hands (path, body,
content type, request id) to the application's task handler, the object it knows only
through :class:`LaneHandler`, and writes the reply. Otherwise the request goes up through
ASGI: BentoML's app and middleware, the service's middleware, its app
(``service.transport.fast_path``), and the route's endpoint, which hands the same four things
to the same handler. One handler, two adapters; the adapters add only framing, so an answer is
the same byte for byte whichever path carried it (tests/test_one_handler.py sends one corpus
through both and compares them).

Why two adapters: at 64 concurrent ``/classify`` clients on two cores, the ASGI layers a
request crosses (uvicorn's request cycle and its messages, BentoML's app with its context,
timeout and routing middleware, Starlette's request and response objects, the service's
middleware) cost more CPU than parsing, validating, batching, running and encoding it
together (docs/evidence/benchmarks.md). None of those layers changes a task route's answer, so the
lane stands in for them:

- the in-flight limit: the same :class:`~service.transport.middleware.Admission`, entered
  before the body is read and left once the answer is written, as ``InFlightLimit`` does;
- BentoML's request deadline: the handler applies the service's own (504), on both paths;
- the request id: the client's ``X-Request-ID`` or one made here, in the answer and the log;
- connection recycling: the same :class:`~service.transport.middleware.Recycling`.

Which requests: ``POST`` to a task route, HTTP/1.1, the exact path (no query string), a
``Content-Length`` within ``MODELSERVE_MAX_BODY_BYTES``, no ``Transfer-Encoding`` or
``Expect``, while the connection is not draining and has no earlier request unanswered.
Everything else (a body over the limit: 413, a streamed body) goes through ASGI.

Nothing is skipped silently: the lane is built at each worker's start only if the ASGI app's
middleware is exactly what it stands in for. Any other (a middleware added with
``app.add_middleware`` or ``ModelService.add_asgi_middleware``, BentoML's access log, metrics
or CORS switched on) leaves it off, with a log line naming what did and a label on
``modelserve_runtime_info``; ``MODELSERVE_DIRECT_LANE=false`` turns it off by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from service.platform.errors import Reply
from service.transport.middleware import Admission, BodyLimit, ConnectionRecycler, InFlightLimit, Recycling

log = logging.getLogger(__name__)

# Middleware of BentoML's app that does not change a task route's answer (module docstring);
# by class name, as BentoML and OpenTelemetry spell them.
_BENTOML_MIDDLEWARE_STOOD_IN_FOR = frozenset(
    {"ContextMiddleware", "TimeoutMiddleware", "OpenTelemetryMiddleware", "JsonErrors"}
)
_APP_MIDDLEWARE_STOOD_IN_FOR = (InFlightLimit, BodyLimit, ConnectionRecycler)


class LaneHandler(Protocol):
    """What the lane needs of the application: the one task handler (``service.api.handler``)."""

    async def answer(
        self, path: str, body: bytes, content_type: str | None, request_id: str, method: str = "POST"
    ) -> Reply: ...


@dataclass(frozen=True)
class LaneParts:
    """What the app gives the lane: its handler, task paths and the state it shares with ASGI."""

    handler: LaneHandler
    paths: tuple[str, ...]
    body_limit: int
    admission: Admission | None
    recycling: Recycling | None


class DirectLane:
    """Takes task requests (see the module docstring) for one worker."""

    def __init__(self, parts: LaneParts) -> None:
        self.paths = {path.encode(): path for path in parts.paths}
        self.handler = parts.handler
        self.body_limit = parts.body_limit
        self.admission = parts.admission
        self.recycling = parts.recycling

    def path_for(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The route's path if the lane takes this request (headers complete), else None."""
        if method != b"POST":
            return None
        path = self.paths.get(url)
        if path is None:
            return None
        length = -1
        for name, value in headers:
            if name == b"content-length":
                if length >= 0 or not value.isdigit():
                    return None  # repeated or odd: the ASGI path says what is wrong
                length = int(value)
            elif name in (b"transfer-encoding", b"expect"):
                return None  # a streamed body
        if not 0 < length <= self.body_limit:
            return None  # no body, or one over the limit: ASGI's BodyLimit answers 413
        return path

    def closes(self, client: tuple[str, int] | None) -> bool:
        """Whether this answer should close its connection, to rebalance (``Recycling``)."""
        return self.recycling is not None and client is not None and self.recycling.due(client)


# --- set-up: once per worker, at its start -----------------------------------------------------


def build(asgi_app: Any, app: Any, parts: LaneParts, enabled: bool) -> tuple[DirectLane | None, str]:
    """The lane for ``app`` (the service's FastPathApp) served inside ``asgi_app`` (what uvicorn
    serves: BentoML's app), or None, and why, if it is off (module docstring)."""
    if not enabled:
        return None, "off by MODELSERVE_DIRECT_LANE=false"
    bentoml_app = _find_starlette(asgi_app)
    if bentoml_app is None:
        return None, f"an ASGI app it does not know ({type(asgi_app).__name__})"
    reasons = [*_unknown_bentoml_middleware(bentoml_app), *_unknown_app_middleware(app)]
    if reasons:
        return None, "it would skip " + "; ".join(reasons)
    return DirectLane(parts), "on"


def _name(middleware: Any) -> str:
    return getattr(middleware.cls, "__name__", str(middleware.cls))


def _unknown_bentoml_middleware(starlette_app: Any) -> list[str]:
    names = [_name(m) for m in starlette_app.user_middleware]
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
