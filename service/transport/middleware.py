"""The service's ASGI middleware: admission control, body size limit, connection recycling,
request ids, JSON errors.

:class:`InFlightLimit`, :class:`BodyLimit` and :class:`ConnectionRecycler` wrap every route of
the service's app (added with ``app.add_middleware`` in ``service.api.routes``; the in-flight limit
outermost, so a refusal costs no parsing and no model time); :class:`JsonErrors` wraps the
whole BentoML app, whose own answers (unknown paths, ``/readyz``) are plain text, and stamps
every answer with its request id.

The in-flight limit and the recycling keep their state in objects of their own
(:class:`Admission`, :class:`Recycling`), made once per app by ``service.api.routes``: the
middleware here and the direct lane (``service.transport.direct_lane``) consult the same
object through its methods, so a request counts against one limit whichever path serves it.

The overload knobs (``service.platform.settings``):

- ``MODELSERVE_MAX_INFLIGHT_PER_WORKER`` (512): requests one worker holds at once; beyond it a
  request is answered 503 + ``Retry-After`` at once. 0 = no limit.
- ``MODELSERVE_OVERLOAD_RETRY_AFTER_S`` (1): the ``Retry-After`` of those refusals.
- ``MODELSERVE_RECYCLE_PACE`` (4): a worker holding more than 64 connections closes at most
  one (to rebalance them, :class:`ConnectionRecycler`) per this many times the connections it
  holds requests. 0 = no pacing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.platform import request_ids
from service.platform.errors import (
    REQUEST_ID_HEADER,
    PayloadTooLarge,
    Reply,
    Unavailable,
    framework_detail,
    log_failed_request,
    render_body,
    render_error,
)
from service.platform.request_ids import request_id_of
from service.transport.responses import framed_headers

log = logging.getLogger(__name__)

# What explains an error at a path: {"error": <replacing the framework's text>, "detail": {...}}.
Explanation = Callable[[], dict[str, Any]]


class Admission:
    """At most ``limit`` requests in flight in one worker; the next ones are refused at once.

    The one count of a worker's requests in flight, for both paths: :class:`InFlightLimit` (ASGI)
    and the direct lane call :meth:`enter` when a request arrives and :meth:`leave` once it is
    answered. A refusal is decided from the path alone, before the body is read or parsed:
    no body parsing, no queueing, no model time. Refusals are logged as one summary line at
    most every ``log_every_s``, not one line each (a line per request would add log I/O to a
    worker exactly when it is overloaded).
    """

    def __init__(self, limit: int, retry_after_s: int = 1, log_every_s: float = 10.0) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.log_every_s = log_every_s
        self._in_flight = 0
        self._refused = 0  # since the last summary line
        self._next_log = 0.0
        self._error = Unavailable(
            "overloaded: too many requests in flight, retry later",
            {
                "limit_per_worker": limit,
                "retry_after_s": retry_after_s,
                "setting": "MODELSERVE_MAX_INFLIGHT_PER_WORKER",
            },
            retry_after_s=retry_after_s,
        )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> bool:
        """Count a request in, if there is room; False: refuse it with :meth:`refusal`."""
        if self._in_flight >= self.limit:
            self._note_refusal()
            return False
        self._in_flight += 1
        return True

    def leave(self) -> None:
        """A request counted in by :meth:`enter` is answered (or abandoned)."""
        self._in_flight -= 1

    def refusal(self) -> Unavailable:
        """What a refused request is answered: 503 with ``Retry-After``."""
        return self._error

    def _note_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + self.log_every_s
            log.warning(
                "overloaded: refused %d request(s) with 503 since the last such line "
                "(%d in flight, limit %d per worker: MODELSERVE_MAX_INFLIGHT_PER_WORKER)",
                self._refused,
                self._in_flight,
                self.limit,
            )
            self._refused = 0


class InFlightLimit:
    """The ASGI side of :class:`Admission`: a request holds its place for the whole exchange.

    Paths in ``exempt`` (``/metrics``) are always served. What runs in front of this app
    (uvicorn, BentoML's middleware, two socket writes) still runs for a refused request.
    """

    def __init__(self, app: ASGIApp, admission: Admission, exempt: Iterable[str] = ("/metrics",)) -> None:
        self.app = app
        self.admission = admission
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        admission = self.admission
        if not admission.enter():
            refusal = render_error(admission.refusal(), request_ids.current())
            return await send_reply(send, refusal, close=True)
        try:
            await self.app(scope, receive, send)
        finally:
            admission.leave()


async def send_reply(send: Send, reply: Reply, close: bool = False) -> None:
    """Send a rendered answer as ASGI messages (``framed_headers``)."""
    headers = framed_headers(reply, close)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


class BodyLimit:
    """413 for a body over ``limit`` bytes: at once from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and int(value or 0) > self.limit:
                error = self._error(int(value))
                request_id = request_ids.current()
                log_failed_request(scope["method"], scope["path"], 413, error.error, request_id)
                return await send_reply(send, render_error(error, request_id))
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise self._error(received)
            return message

        await self.app(scope, limited_receive, send)

    def _error(self, size: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body ({size} bytes or more) is over the limit of "
            f"{self.limit} bytes (MODELSERVE_MAX_BODY_BYTES)",
            {"limit": self.limit},
        )


class Recycling:
    """Closes each keep-alive connection once it is about ``max_age_s`` old.

    BentoML's workers accept from one shared listening socket, and the worker that wakes
    first takes every connection waiting in the backlog: a burst of keep-alive connections
    can land 16/0 on two workers and leave a core idle for as long as the clients stay
    connected. Here a connection's first response after its age (``max_age_s``, +-25% so
    that a burst of connections does not come due at once) carries ``Connection: close``;
    the client reconnects, and the new connection goes to either worker, most often to the
    less busy one, the one waiting for work. A worker holding more connections closes more
    of them per second, so the split evens out within a few ages, and follows the load
    after that. gRPC's ``MAX_CONNECTION_AGE`` does the same for the same reason.

    Connections are told apart by the client address and port; entries of connections the
    client closed itself are forgotten once past their age.

    With many connections, recycling is paced: a worker holding more than ``paced_above``
    connections closes at most one per ``pace`` x (connections it holds) requests it serves
    (``pace`` 0 = never paced). Each close is a reconnect some worker has to accept, and a
    worker accepts one connection per turn of its event loop (measured: one ``accept4`` per
    ``epoll_pwait`` under uvloop), while a turn serves at most one request per connection;
    so the pace keeps reconnects to at most one per ``pace`` turns, and the accept queue
    short. Unpaced, 512 clients at a 2 s age ask for 256 reconnects a second from workers
    that, fully loaded, turn only a few dozen times a second: hundreds of connections then
    waited in the kernel's accept queue, their requests already sent, for seconds
    (bench/overload.py: 228 on average, a p99 of 3.7 s). With 32 connections a worker closes
    16 a second, well within what it accepts, and a worker that holds most of the
    connections while another idles must give them up quickly: below the threshold nothing
    changes. Above it, connections live longer than their age.
    """

    def __init__(self, max_age_s: float, pace: float = 0.0, paced_above: int = 64) -> None:
        if max_age_s <= 0 or pace < 0:
            raise ValueError(f"max_age_s must be > 0 and pace >= 0, got {max_age_s} and {pace}")
        self.max_age_s = max_age_s
        self.pace = pace
        self.paced_above = paced_above
        self.served_since_close = 0  # requests since the last close
        self.deadlines: dict[tuple[str, int], float] = {}  # client (host, port) -> when to close
        self.next_sweep = 0.0
        self.random = random.Random()

    def due(self, client: tuple[str, int]) -> bool:
        """Whether the answer to this request of ``client``'s connection should close it
        (counted as served, and as closed when it should)."""
        now = time.monotonic()
        self.served_since_close += 1
        deadline = self.deadlines.get(client)
        if deadline is None:
            self._forget_expired(now)
            self.deadlines[client] = now + self.max_age_s * self.random.uniform(0.75, 1.25)
        if deadline is None or now < deadline or not self._may_close():
            return False
        del self.deadlines[client]
        self.served_since_close = 0
        return True

    def _may_close(self) -> bool:
        """Whether a close is due by the pace (see above); the connections held are those with
        an entry, which the sweep keeps close to the truth."""
        held = len(self.deadlines)
        return held <= self.paced_above or self.served_since_close >= self.pace * held

    def _forget_expired(self, now: float) -> None:
        """At most once per age: drop connections past their deadline (most closed already)."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + self.max_age_s
        for client in [c for c, deadline in self.deadlines.items() if deadline <= now]:
            del self.deadlines[client]


class ConnectionRecycler:
    """The ASGI side of :class:`Recycling`: the answer that is due carries ``Connection: close``."""

    def __init__(self, app: ASGIApp, recycling: Recycling) -> None:
        self.app = app
        self.recycling = recycling

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or client is None or not self.recycling.due(client):
            return await self.app(scope, receive, send)

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)


class JsonErrors:
    """Stamps every response with its request id, and makes every error a JSON object with it.

    Every response gets ``X-Request-ID`` (``service.platform.request_ids``: the client's, or one
    made here), and the id is the current one for the log while the request is handled. An
    error answer rendered by the service (``service.platform.errors.render_error``: it carries
    the id already, and was logged where it was made) passes untouched. Any other error (4xx,
    5xx: BentoML's 404 and 504, /readyz's 503, ...) is rendered here the same way: the
    framework's JSON object, or ``{"error": <its text>, "detail": {status, method, path}}`` for
    plain text, with the id, and one log line.

    Successful answers pay for the id and one header (about a microsecond per request);
    only the framework's errors are buffered and rewritten.
    """

    def __init__(self, app: ASGIApp, explain: Mapping[str, Explanation] | None = None) -> None:
        self.app = app
        # Path -> what says more about an error at that path than the framework's text
        # (/readyz: which models or workers are not ready); it may replace "error" and add to
        # "detail".
        self.explain = dict(explain or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = request_id_of(scope["headers"])
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        start: Message | None = None
        chunks: list[bytes] = []

        async def stamp(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if any(name == REQUEST_ID_HEADER for name, _ in headers):
                    return await send(message)  # rendered (and an error logged) by the service
                if message["status"] < 400:
                    message["headers"] = [*headers, id_header]
                    return await send(message)
                start = message
                return None
            if start is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return None
            await self._send_framework_error(scope, start, b"".join(chunks), request_id, send)
            return None

        token = request_ids.CURRENT.set(request_id)
        try:
            await self.app(scope, receive, stamp)
        finally:
            request_ids.CURRENT.reset(token)

    async def _send_framework_error(
        self, scope: Scope, start: Message, body: bytes, request_id: str, send: Send
    ) -> None:
        """A framework's error answer, rendered as the service renders its own, and logged."""
        status = start["status"]
        answer = _json_object(body) if _is_json(start["headers"]) else None
        if answer is None:
            text = body.decode("utf-8", "replace").strip() or "error"
            where = framework_detail(scope.get("method"), scope.get("path"), status)
            answer = {"error": text, "detail": where}
            explanation = self.explain.get(scope["path"])
            if explanation is not None:
                more = explanation()
                answer = {
                    "error": more.get("error", text),
                    "detail": {**answer["detail"], **more.get("detail", {})},
                }
        log_failed_request(scope.get("method"), scope.get("path"), status, answer.get("error"), request_id)
        kept = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in start["headers"]
            if k.lower() not in (b"content-type", b"content-length")
        }
        await send_reply(send, render_body(status, answer, request_id, kept))


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and b"json" in v for k, v in headers)
