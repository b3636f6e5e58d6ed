"""Every error the service answers: a 4xx/5xx status and one JSON object body, rendered once.

Body: ``{"error": "<what was wrong>", "detail": <where / why>, "request_id": "<id>"}``
(``detail`` only where there is one). :func:`render_error` is the one function that makes that
body and its headers; every path that answers an error calls it: the task handler
(``service.api.handler``), the ASGI exception handlers (``service.api.error_handlers``), the
middleware's refusals and the framework's own errors (``service.transport.middleware``), and
the protocol's 400/408/503 (``service.transport.connections``). So an error looks the same
byte for byte whichever layer answered it, and :func:`log_failed_request` is its one log line.

No HTTP framework here: this is the bottom layer, imported by every other.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
JSON = b"application/json"


class ApiError(Exception):
    """An error with an HTTP status, a message and (optionally) where it happened.

    The sections below (Status, When, Example, Client) are docs/errors.md's catalogue, written
    by ``python -m tools.reference``. The framework's own 405 is rendered in the same shape:

    Status: 405
    When: a route is asked with a method it does not take (``GET /classify``; the task and
    ``infer`` routes take POST, health and model metadata GET).
    Example: {"error": "Method Not Allowed", "detail": {"status": 405, "method": "GET",
    "path": "/classify"}, "request_id": "12fe0efb0f-18"}
    Client: use the route's method (the OpenAPI document at ``/docs.json`` lists them).
    """

    status = 400

    def __init__(
        self,
        error: str,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail
        self.headers = headers
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error}
        if self.detail is not None:
            body["detail"] = self.detail
        return body


class InvalidInput(ApiError):
    """The request is not one the route accepts.

    When: the body or a tensor fails validation: a field missing, of the wrong type or out of
    range, a shape or datatype the model does not take, a forecaster row shorter than the
    model's ``min_length``. Also a request line or headers that cannot be parsed
    (``invalid HTTP request``; the connection is then closed).
    Example: {"error": "invalid request: images[0][0][7]: Input should be less than or equal
    to 16", "detail": [{"field": "images[0][0][7]", "message": "Input should be less than or
    equal to 16"}], "request_id": "12fe0efb0f-13"}
    Client: fix the request: ``error`` names the first field at fault and ``detail`` lists up
    to 20. Sent again unchanged, it fails again.
    """

    status = 400


class NotFound(ApiError):
    """No such route, model or model version.

    When: the path is no route (``detail`` holds the method and path), the model is not served
    (``detail.available`` lists those that are), or the version asked for is not (or no longer)
    served.
    Example: {"error": "unknown model 'nope'", "detail": {"model": "nope", "available":
    ["classifier", "forecaster", "generator"]}, "request_id": "12fe0efb0f-16"}
    Client: check the name against ``GET /v2/models/{name}`` (which lists the versions served);
    leave the version out to get whichever is served.
    """

    status = 404


class RequestTimeout(ApiError):
    """The client was too slow: headers or body did not arrive in time.

    When: the headers were not complete ``MODELSERVE_HEADER_TIMEOUT_S`` after the request's
    first byte, or the body paused for ``MODELSERVE_BODY_TIMEOUT_S`` or arrived slower than
    ``MODELSERVE_BODY_MIN_RATE_BPS``. The connection is closed after the answer.
    Example: {"error": "request timeout", "detail": "the request headers were not complete
    within 10 s", "request_id": "12fe0efb0f-21"}
    Client: send the whole request at once, on a new connection; nothing was run, so sending
    it again is safe.
    """

    status = 408


class PayloadTooLarge(ApiError):
    """The request is over one of the service's size limits.

    When: the body is over ``MODELSERVE_MAX_BODY_BYTES``, it holds more items than
    ``MODELSERVE_MAX_ITEMS_PER_REQUEST`` or more history values than
    ``MODELSERVE_MAX_SERIES_POINTS_PER_REQUEST``, or an uploaded picture has more pixels than
    ``MODELSERVE_MAX_IMAGE_PIXELS``. ``error`` names the limit and its setting.
    Example: {"error": "labels: 1025 items is more than the limit of 1024 per request
    (MODELSERVE_MAX_ITEMS_PER_REQUEST)", "detail": {"field": "labels", "limit": 1024},
    "request_id": "12fe0efb0f-20"}
    Client: split the work into smaller requests (the service batches them together again).
    """

    status = 413


class RequestHeaderFieldsTooLarge(ApiError):
    """The request's headers are past one of the service's bounds.

    When: a header line is longer than ``MODELSERVE_MAX_HEADER_LINE_BYTES``, the request line
    and headers together are longer than ``MODELSERVE_MAX_HEADER_BYTES``, or there are more
    header lines than ``MODELSERVE_MAX_HEADER_COUNT``. It is answered as soon as the bound is
    crossed, while the headers still arrive, and the connection is closed after the answer.
    Example: {"error": "request headers too large: a header line is longer than 8192 bytes
    (MODELSERVE_MAX_HEADER_LINE_BYTES)", "detail": {"limit": 8192, "setting":
    "MODELSERVE_MAX_HEADER_LINE_BYTES"}, "request_id": "12fe0efb0f-22"}
    Client: send fewer or shorter headers (a large token or cookie belongs in the body), on a
    new connection; nothing was run, so sending it again is safe.
    """

    status = 431


class UnsupportedMediaType(ApiError):
    """The body is not of a type the route reads.

    When: a JSON route got another content type, ``/classify_image`` got no
    ``multipart/form-data`` upload, or the uploaded file is not a PNG or JPEG picture.
    Example: {"error": "content-type 'text/plain' is not accepted; send application/json",
    "detail": {"content_type": "text/plain"}, "request_id": "12fe0efb0f-19"}
    Client: send ``content-type: application/json`` (``curl -H``, or ``httpx``'s ``json=``),
    or a PNG or JPEG file as the ``image`` field of a form upload.
    """

    status = 415


class InternalError(ApiError):
    """A bug, not the client's fault: the cause goes to the log, never to the client.

    When: something failed that should not have (a model's run raised, say); the server log
    has the traceback under the same request id, and ``modelserve_errors_total{status="500"}``
    counts it. A model's failed run names the model in ``detail``.
    Client: report it with the ``request_id``; sent again, it will most likely fail the same way.
    """

    status = 500

    def __init__(self, detail: Any = "the cause is in the server log") -> None:
        super().__init__("internal server error", detail)


class Unavailable(ApiError):
    """Overloaded or not ready: the client may retry later.

    When: a worker already holds ``MODELSERVE_MAX_INFLIGHT_PER_WORKER`` requests, a model's
    queue is full (``MODELSERVE_BATCH__MAX_QUEUE_SIZE``) or a request waited longer than
    ``MODELSERVE_BATCH__QUEUE_TIMEOUT_S`` in it, the service is starting or draining after
    SIGTERM, or the model failed to load (``detail.reason``). Always with a ``Retry-After``
    header.
    Example: {"error": "overloaded: too many requests in flight, retry later", "detail":
    {"limit_per_worker": 512, "retry_after_s": 1, "setting":
    "MODELSERVE_MAX_INFLIGHT_PER_WORKER"}, "request_id": "12fe0efb0f-22"}
    Client: wait ``Retry-After`` seconds and send it again, to another replica if there is one;
    the request was not run. Many of them mean the service needs more replicas
    (docs/operations.md alerts on it).
    """

    status = 503

    def __init__(self, error: str, detail: Any = None, retry_after_s: int = 1) -> None:
        super().__init__(error, detail, headers={"Retry-After": str(retry_after_s)})


class Timeout(ApiError):
    """Not answered within the request deadline (``MODELSERVE_HTTP_TIMEOUT_S``).

    When: the request was not answered within ``MODELSERVE_HTTP_TIMEOUT_S`` (2 s by default),
    which every request the size limits admit meets on an unloaded server: a 504 means the
    server is overloaded or a model is far slower than it should be.
    Client: send it again after a pause; if 504s persist, the service needs more replicas.
    """

    status = 504

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"not answered within the request deadline of {timeout_s:g} s",
            {"deadline_s": timeout_s, "setting": "MODELSERVE_HTTP_TIMEOUT_S"},
        )


class Reply(NamedTuple):
    """An answer ready for any adapter: status, headers (lower-case, without framing), body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def render_error(error: ApiError, request_id: str) -> Reply:
    """The one rendering of an error answer: its JSON body with the request id, and headers.

    Headers: the error's own (``Retry-After``), then content type and the request id; the
    adapter adds framing (content length, connection).
    """
    return render_body(error.status, error.body(), request_id, error.headers)


def render_body(
    status: int, body: dict[str, Any], request_id: str, headers: dict[str, str] | None = None
) -> Reply:
    """:func:`render_error` for an error body made elsewhere (a framework's JSON error)."""
    own = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    return Reply(
        status,
        (*own, (b"content-type", JSON), (REQUEST_ID_HEADER, request_id.encode())),
        orjson.dumps({**body, "request_id": request_id}, option=orjson.OPT_SERIALIZE_NUMPY),
    )


def log_failed_request(method: Any, path: Any, status: int, error: Any, request_id: str) -> None:
    """The one log line of a failed request: INFO for 4xx, WARNING for 5xx; of each kind only the
    first ``MODELSERVE_LOG_FAILED_BURST`` an interval, then a count (:class:`FailedRequestLog`)."""
    if failed_request_log().admit(status, method, path, error):
        log.log(
            logging.WARNING if status >= 500 else logging.INFO,
            "%s %s answered %d: %s (request_id=%s)",
            method,
            path,
            status,
            error,
            request_id,
        )


# Numbers (indices, sizes, seconds) differ between failures that are otherwise alike: a kind
# leaves them out, so "images[3]: ..." and "images[7]: ..." are one kind.
_NUMBERS = re.compile(r"\d+")
# Kinds counted apart in one interval. Failures of any further kind share one count, so that a
# flood of ever new paths or wordings is bounded too.
MAX_KINDS = 100
_OTHER_KINDS = ("", "", 0, "")


class FailedRequestLog:
    """How many failed requests of each kind get a log line: the first ``burst`` in an interval.

    A kind is the status, method, path and the error's wording with its numbers left out. The
    rest of an interval's failures of a kind are counted, and once the interval is over one
    line says how many were left out: at the next failed request, or (where an event loop
    runs, as in every worker) on a timer at the interval's end, so the count is not held back
    until the next flood. Only log lines are left out: every failure is still counted in the
    metrics by its caller. ``burst`` 0 writes every line.
    """

    def __init__(self, burst: int, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._clock = clock
        # Failures come from the event loop, and from helper threads where a handler runs on one.
        self._lock = threading.Lock()
        self._started_at = clock()
        # kind -> [lines written, lines left out] in the interval that began at _started_at
        self._kinds: dict[tuple[str, str, int, str], list[int]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def admit(self, status: int, method: Any, path: Any, error: Any) -> bool:
        """Whether this failure gets its line; if not, it is counted for the interval's summary."""
        if not self.burst:
            return True
        now = self._clock()
        kind = (str(method), str(path), status, _NUMBERS.sub("#", str(error)))
        with self._lock:
            ended = self._end_interval_if_due(now)
            counts = self._kinds.get(kind)
            if counts is None:
                if len(self._kinds) >= MAX_KINDS:
                    kind = _OTHER_KINDS
                counts = self._kinds.setdefault(kind, [0, 0])
            admitted = counts[0] < self.burst
            counts[0 if admitted else 1] += 1
            first_left_out = not admitted and self._timer is None
            due_in = self._started_at + self.interval_s - now
        self._write_summaries(ended)
        if first_left_out:
            self._summarise_in(due_in)
        return admitted

    def flush(self) -> None:
        """Write the interval's summary lines if the interval is over (the timer's callback)."""
        with self._lock:
            self._timer = None
            ended = self._end_interval_if_due(self._clock())
        self._write_summaries(ended)

    def _end_interval_if_due(self, now: float) -> list[tuple[tuple[str, str, int, str], int]]:
        """(Under the lock.) The left-out counts of an interval that is over, and a new one begun."""
        if now - self._started_at < self.interval_s:
            return []
        ended = [(kind, counts[1]) for kind, counts in self._kinds.items() if counts[1]]
        self._kinds = {}
        self._started_at = now
        return ended

    def _summarise_in(self, delay_s: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: the next failure writes the summary
            return
        with self._lock:
            if self._timer is None:
                # A little after the interval's end, so that the clock has surely passed it.
                self._timer = loop.call_later(max(delay_s, 0) + 0.05, self.flush)

    def _write_summaries(self, ended: list[tuple[tuple[str, str, int, str], int]]) -> None:
        for (method, path, status, wording), left_out in ended:
            if (method, path, status, wording) == _OTHER_KINDS:
                log.info(
                    "%d more failed requests of other kinds were not logged in the last %g s",
                    left_out,
                    self.interval_s,
                )
                continue
            log.log(
                logging.WARNING if status >= 500 else logging.INFO,
                "%d more failed requests like %s %s answered %d: %s were not logged in the last %g s",
                left_out,
                method,
                path,
                status,
                wording,
                self.interval_s,
            )


_failed_request_log: FailedRequestLog | None = None


def failed_request_log() -> FailedRequestLog:
    """The process's :class:`FailedRequestLog`, made from the settings at its first use."""
    global _failed_request_log
    if _failed_request_log is None:
        from service.platform.settings import get_settings  # settings is above this bottom layer

        settings = get_settings()
        _failed_request_log = FailedRequestLog(settings.log_failed_burst, settings.log_failed_interval_s)
    return _failed_request_log


def location(loc: tuple[Any, ...]) -> str:
    """``("images", 0, "list[...]", 3)`` -> ``"images[0][3]"`` (union branch names dropped)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "[" not in part and "(" not in part:  # skip pydantic's union-branch labels
            text += f".{part}" if text else part
    return text or "body"


def validation_detail(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic errors as ``[{"field": "images[0][3]", "message": ...}]``, one per place."""
    seen: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_context=False):
        seen.setdefault(location(err["loc"]), err["msg"])
    return [{"field": field, "message": message} for field, message in list(seen.items())[:20]]


def invalid_body(exc: ValidationError) -> InvalidInput:
    detail = validation_detail(exc)
    first = detail[0] if detail else {"field": "body", "message": "invalid"}
    return InvalidInput(f"invalid request: {first['field']}: {first['message']}", detail)


def framework_detail(method: Any, path: Any, status: int) -> dict[str, Any]:
    """What a framework error (no route, wrong method, ...) concerned: status, method and path."""
    return {"status": status, "method": method, "path": path}
