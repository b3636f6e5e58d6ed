"""HTTP connections: slow clients time out, and SIGTERM drains open connections without a reset.

BentoML runs uvicorn in each worker (``_bentoml_impl/worker/service.py`` builds a
``uvicorn.Config`` and serves on the socket the arbiter shares), with uvicorn's httptools
protocol. Left as they are, a client that sends its headers one byte a second, a connection
that sends nothing, or a body that stops half way hold a socket for as long as the client
likes; after SIGTERM uvicorn closes every idle keep-alive connection at once, so a request a
client sends on it a moment later meets a closed socket (connection reset by peer).

:func:`install` (called once, where the service module is imported) replaces
``uvicorn.Config`` with :class:`GuardedConfig`, which serves HTTP with
:class:`GuardedHttpToolsProtocol` and the timeouts below. That protocol, per connection:

- idle: a connection with no request under way (a new one, or a keep-alive one between
  requests) that receives nothing for ``idle_timeout_s`` is closed (uvicorn's keep-alive
  timer, also armed when the connection is made);
- headers: a request whose headers are not complete ``header_timeout_s`` after its first byte
  is answered 408 and closed;
- body: a request body that receives nothing for ``body_timeout_s`` is answered 408 (if no
  answer has started) and closed; its handler sees the client as gone;
- an answer sent before its request's body was read to the end (a 413) carries
  ``Connection: close`` and the connection is closed, instead of reading the rest of the body;
- a request line or headers the parser refuses are answered 400 with a JSON body;
- headers past a bound (one line, all of them together, their count) are answered 431 and the
  connection closed, as soon as the bound is crossed while they arrive; a request line longer
  than a header line may be is answered 400 the same way. uvicorn keeps an unfinished request's
  target and headers, and the parser the header it is reading, in memory until the headers end,
  however long they grow: so what one connection holds is bounded by the header bounds plus one
  read (see :meth:`GuardedHttpToolsProtocol._unfinished_head`);
- every close is a lingering one: the answer is flushed, the sending side shut (FIN), and
  whatever the client still sends is read and dropped until it closes its side or
  ``linger_s`` passes, so no unread data makes the kernel reset the connection and lose the
  answer on its way.

On SIGTERM the arbiter shuts its listening socket down before it stops the workers, so a
client that connects from then on is refused at once instead of waiting in the kernel's queue
to be reset when the server exits (:func:`_stop_listening_at_sigterm`; in Kubernetes none
arrive, the preStop hook keeps traffic away). Each worker's uvicorn stops accepting and asks
each connection to shut down. Here, a draining connection:

- with a request in flight: the answer is sent with ``Connection: close``, then closed;
- idle: stays open until its idle timer or the drain deadline, whichever comes first, and a
  request arriving on it is answered 503 + ``Connection: close`` + ``Retry-After`` at once,
  with no model time;
- at the drain deadline (``drain_timeout_s`` after SIGTERM): a request still unanswered is
  answered 503 + ``Retry-After`` and closed, an idle connection is closed.

uvicorn's own graceful timeout is set to ``drain_timeout_s + linger_s + 1``: after it the
remaining tasks are cancelled, then the service's shutdown runs (the batchers fail whatever
is still queued with a 503) and the worker exits. So a worker has closed every connection
at most ``drain_timeout_s + linger_s`` seconds after SIGTERM, is past uvicorn's bound one second
later, and every process of the server is gone after the service's shutdown and the arbiter's
exit, which took one to two seconds more: about 10 s with the defaults (measured figures in
docs/evidence/reliability.md).

Settings (``service.platform.settings``), each read from ``MODELSERVE_<FIELD>`` (seconds):

- ``MODELSERVE_HEADER_TIMEOUT_S`` (10): first byte of a request to the end of its headers.
- ``MODELSERVE_IDLE_TIMEOUT_S`` (5): a connection with no request under way.
- ``MODELSERVE_BODY_TIMEOUT_S`` (10): longest pause while a request body arrives.
- ``MODELSERVE_DRAIN_TIMEOUT_S`` (5): after SIGTERM, how long requests in flight may take (more
  than BentoML's own request timeout, ``MODELSERVE_HTTP_TIMEOUT_S``, 2 s by default).
- ``MODELSERVE_LINGER_S`` (2): after an answer that closes the connection, how long the
  client's leftover data is read and dropped before the socket is closed.

and in bytes or lines: ``MODELSERVE_MAX_HEADER_LINE_BYTES`` (8192), ``MODELSERVE_MAX_HEADER_BYTES``
(65536) and ``MODELSERVE_MAX_HEADER_COUNT`` (100).

Only the httptools protocol is covered (BentoML's default: uvicorn's "auto" picks it when
httptools is installed, as it is with BentoML). What this module relies on in uvicorn, BentoML
and circus is declared at its end as hooks (``service.transport.hooks``) and checked at start:
the arbiter checks the replaced config, the protocol's and request cycle's internals and the
SIGTERM handler when the service is imported; each worker checks that BentoML really built its
server through ``GuardedConfig`` with the guarded protocol, before it takes the direct lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import uvicorn
import uvicorn.config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from service.platform import request_ids
from service.platform.errors import (
    ApiError,
    InternalError,
    Reply,
    RequestHeaderFieldsTooLarge,
    RequestTimeout,
    Unavailable,
    failed_request_log,
    render_error,
)
from service.platform.request_ids import request_id_of
from service.platform.settings import get_settings
from service.transport.direct_lane import DirectLane
from service.transport.hooks import Hook, missing_attributes, verify

log = logging.getLogger(__name__)

# What a draining worker tells a client to wait before asking again (another server will answer).
DRAIN_RETRY_AFTER_S = 1
DRAINING = Unavailable(
    "the server is shutting down",
    "this server is draining its connections; send the request again",
    retry_after_s=DRAIN_RETRY_AFTER_S,
)
UNPARSABLE = ApiError("invalid HTTP request", "the request line or headers could not be parsed")
# A request line's bytes besides its target: the method (10 at most: MKCALENDAR), two spaces,
# HTTP/1.1 and CRLF.
REQUEST_LINE_EXTRA = 22


def http_answer(default_headers: list[tuple[bytes, bytes]], reply: Reply, keep_alive: bool) -> bytes:
    """A whole HTTP/1.1 answer: status line, uvicorn's default headers, the reply's, framing, body.

    The one place the protocol writes an answer itself (the direct lane's, and the 400, 408 and
    503 it gives on its own); the header order is the one uvicorn writes for an ASGI answer.
    """
    head = [STATUS_LINE[reply.status]]
    for name, value in (*default_headers, *reply.headers):
        head.extend([name, b": ", value, b"\r\n"])
    head.extend([b"content-length: ", str(len(reply.body)).encode(), b"\r\n"])
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.extend([b"\r\n", reply.body])
    return b"".join(head)


async def answer_draining(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app of a draining connection: 503, ``Retry-After``, ``Connection: close``."""
    reply = render_error(DRAINING, request_id_of(scope["headers"]))
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})


class LingeringTransport:
    """A connection's transport whose ``close()`` is a lingering close.

    The answer already written is flushed and the sending side shut (FIN); reading goes on,
    and what arrives is dropped (the protocol checks :attr:`lingering`), until the client
    closes its side (then asyncio closes the transport) or ``linger_s`` passes. Closing a
    socket with unread data in it makes the kernel send a reset, which can destroy the answer
    before the client reads it; this is how nginx and Go's server close too.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, linger_s: float):
        self._transport = transport
        self._loop = loop
        self._linger_s = linger_s
        self._timer: asyncio.TimerHandle | None = None
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self.lingering:  # after close() nothing more is sent, as on a closed transport
            self._transport.write(data)

    def pause_reading(self) -> None:
        if not self.lingering:  # leftovers must keep being read, or they would cause a reset
            self._transport.pause_reading()

    def close(self) -> None:
        if self.is_closing():
            return
        self.lingering = True
        if self._linger_s <= 0 or not self._transport.can_write_eof():
            self._transport.close()
            return
        try:
            self._transport.write_eof()
            self._transport.resume_reading()
        except (OSError, RuntimeError):  # the peer is gone already
            self._transport.close()
            return
        self._timer = self._loop.call_later(self._linger_s, self._transport.close)

    def cancel_linger(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class DirectCycle(RequestResponseCycle):
    """A request the direct lane answers: admitted, its body read, the one handler, the answer.

    A uvicorn request cycle, so that the protocol's timeouts, drain and disconnects treat it
    as any other request; :meth:`run_direct` stands in for ``run_asgi``.
    """

    async def run_direct(self, lane: DirectLane, path: str, client: Any) -> None:
        request_id = request_id_of(self.scope["headers"])
        admission = lane.admission
        if admission is not None and not admission.enter():
            # As InFlightLimit refuses: before the body is read, closing the connection.
            self.keep_alive = False
            return await self._write(render_error(admission.refusal(), request_id))
        try:
            while self.more_body:  # the body, as receive() would read it
                if self.disconnected or self.response_complete:
                    return
                self.flow.resume_reading()
                await self.message_event.wait()
                self.message_event.clear()
            if self.disconnected or self.response_complete:  # gone, or answered by a timeout
                return
            # The request's id for every log line written meanwhile (this task's own context).
            request_ids.CURRENT.set(request_id)
            reply = await lane.handler.answer(path, bytes(self.body), self.content_type, request_id)
            if lane.closes(client):
                self.keep_alive = False
            await self._write(reply)
        except Exception:
            log.exception("direct lane: unexpected error on %s (request_id=%s)", path, request_id)
            await self._write(render_error(InternalError(), request_id))
        finally:
            if admission is not None:
                admission.leave()
            self.on_response = lambda: None

    @property
    def content_type(self) -> str | None:
        for name, value in self.scope["headers"]:
            if name == b"content-type":
                return value.decode("latin-1")
        return None

    async def _write(self, reply: Reply) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.response_started or self.disconnected:  # answered by the drain, or gone
            return
        self.response_started = True
        if self.more_body:  # answered before the body was read (a refusal): close, as ASGI does
            self.keep_alive = False
        self.transport.write(http_answer(self.default_headers, reply, self.keep_alive))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, idle and body timeouts, lingering closes and a
    drain on shutdown that answers instead of resetting (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = get_settings()
        self.timeout_keep_alive = self.limits.idle_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._reading_headers = False
        self._body_progress_at = 0.0  # when the body of the request under way last grew
        self._body_started_at = 0.0  # when it was first seen incomplete
        self._body_bytes = 0  # how much of it has arrived
        # The header bounds (see _unfinished_head): whether a message is under way, how many
        # began during the read being parsed and its length, whether an earlier read left this
        # request's head unfinished; then, counted only once one did: the bytes of the unfinished
        # line at the end of the last read, whether a line of this head has ended, and the bytes
        # and number of the header lines counted so far.
        self._message_open = False
        self._begun = 0
        self._read_bytes = 0
        self._head_continued = False
        self._line_bytes = 0
        self._line_ended = False
        self._header_bytes = 0
        self._headers_counted = 0
        self.draining = False

    # --- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(LingeringTransport(transport, self.loop, self.limits.linger_s))  # type: ignore[arg-type]
        # uvicorn arms its keep-alive timer only after a first answer; a connection that never
        # sends a byte is idle too.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._body_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self.transport.cancel_linger()  # type: ignore[attr-defined]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:  # type: ignore[attr-defined]
            return  # the answer is sent and the connection closing: leftovers are dropped
        in_head = self._reading_headers
        idle = not self._message_open
        self._begun = 0
        self._read_bytes = len(data)
        super().data_received(data)
        if self._reading_headers and not self.transport.is_closing():
            # The read left a request's headers unfinished: what it holds of them is checked now.
            head_began_at_start = (in_head and self._begun == 0) or (idle and self._begun == 1)
            refusal = self._unfinished_head(data, head_began_at_start)
            if refusal is not None:
                self._answer_and_close(refusal)
                return
        self._time_what_is_incomplete()

    def send_400_response(self, msg: str) -> None:
        # The parser refused the request (a malformed or over-long request line or header):
        # the same JSON error shape as every other answer, instead of uvicorn's plain text.
        self._answer_and_close(UNPARSABLE)

    def _answer_and_close(self, error: ApiError) -> None:
        """Answer a request whose headers are incomplete or refused (its id, if it sent one
        already, else a new one), and close."""
        if not self.transport.is_closing():
            request_id = request_id_of(self.headers or [])
            self._log_closing(error, request_id)
            reply = render_error(error, request_id)
            self.transport.write(http_answer(self.server_state.default_headers, reply, keep_alive=False))
        self.transport.close()

    def _log_closing(self, error: ApiError, request_id: str) -> None:
        # The drain has a line of its own, once per worker; the others are failed requests, and a
        # flood of them is bounded as log_failed_request bounds its own (FailedRequestLog).
        if error is not DRAINING and failed_request_log().admit(error.status, "-", "-", error.error):
            log.info(
                "closing a connection from %s: %s: %s (request_id=%s)",
                self.client,
                error.error,
                error.detail,
                request_id,
            )

    # --- the request timers ----------------------------------------------------------------
    # Armed only when a read leaves a request's headers or body incomplete: most requests
    # arrive whole in one read and never need one (a timer per request is measurable CPU).

    def _time_what_is_incomplete(self) -> None:
        if self.transport.is_closing():
            return
        if self._reading_headers:
            if self._header_timer is None:
                self._arm_header_timer()
            return
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            self._body_progress_at = self.loop.time()
            if self._body_timer is None:
                self._body_started_at = self._body_progress_at
                self._arm_body_timer(self.limits.body_timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._body_bytes = 0
        self._message_open = True
        self._begun += 1
        self._head_continued = False

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():  # refused earlier in this read (a pipelined request)
            return
        self._reading_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        limits = self.limits
        # A head that came whole in one read no longer than a line may be is within every bound
        # but the count: the full check (a few microseconds) is left for the others.
        if (
            self._head_continued
            or self._read_bytes > limits.max_header_line_bytes
            or len(self.headers) > limits.max_header_count
        ):
            if not self._head_continued:
                self._count_head_afresh()
            self._line_ended = True  # here every line has ended, the request line first
            refusal = self._head_past_a_bound(0)
            if refusal is not None:  # the headers ended in the same read that crossed a bound
                return self._answer_and_close(refusal)
        if not self.draining and (self.cycle is None or self.cycle.response_complete):
            lane = self.config.direct_lane  # type: ignore[attr-defined]
            if lane is not None and not self.expect_100_continue:
                path = lane.path_for(self.parser.get_method(), self.url, self.headers)
                if path is not None and self.parser.get_http_version() == "1.1":
                    return self._answer_directly(lane, path)
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is previous:  # an upgrade: no request cycle of ours
            return
        send = cycle.send

        async def send_closing_if_body_unread(message: Any) -> None:
            # Answered before the request body was read to the end (a 413): reading the rest
            # only to throw it away would keep the client sending; say so, and close.
            if message["type"] == "http.response.start" and cycle.more_body:
                cycle.keep_alive = False
            await send(message)

        cycle.send = send_closing_if_body_unread  # type: ignore[method-assign]

    def _answer_directly(self, lane: DirectLane, path: str) -> None:
        """Start the request's :class:`DirectCycle`: what uvicorn's ``on_headers_complete``
        does, with the direct lane instead of the ASGI app."""
        scope = self.scope
        scope["method"] = "POST"
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + self.url
        scope["query_string"] = b""
        self.cycle = cycle = DirectCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=self.parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        task = self.loop.create_task(cycle.run_direct(lane, path, self.client))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_body(self, body: bytes) -> None:
        if self.transport.is_closing():  # the body of a request refused in this same read
            return
        super().on_body(body)
        self._body_bytes += len(body)

    def on_message_complete(self) -> None:
        self._message_open = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self.transport.is_closing():  # the end of a request refused in this same read
            return
        super().on_message_complete()

    # --- header bounds --------------------------------------------------------------------

    def _unfinished_head(self, data: bytes, head_began_at_start: bool) -> ApiError | None:
        """After a read that leaves a request's headers unfinished: its refusal if it is past a
        header bound, else None.

        What the head holds is counted from what uvicorn and the parser keep: the request
        target (``self.url``), the header lines already complete (``self.headers``, checked in
        :meth:`_head_past_a_bound`), and the line still arriving, which the parser buffers
        unseen: the bytes after the last line feed, carried from read to read. When the head
        began after an earlier request in this same read (pipelining), the bytes after the last
        line feed may include the end of that request; then, before a header line is complete,
        the line is taken to be the request line so far (its target and at most
        ``REQUEST_LINE_EXTRA``), which may count up to one read too little, never too much.
        """
        if not self._head_continued:
            self._head_continued = True
            self._count_head_afresh()
        line_feed = data.rfind(b"\n")
        if head_began_at_start:
            if line_feed < 0:
                self._line_bytes += len(data)
            else:
                self._line_bytes = len(data) - line_feed - 1
                self._line_ended = True
        elif self.headers:  # a complete header line: the last line feed is this request's
            self._line_bytes = len(data) - line_feed - 1
            self._line_ended = True
        else:
            self._line_bytes = min(len(data) - line_feed - 1, len(self.url) + REQUEST_LINE_EXTRA)
        return self._head_past_a_bound(self._line_bytes)

    def _count_head_afresh(self) -> None:
        self._line_bytes = 0
        self._line_ended = False
        self._header_bytes = 0
        self._headers_counted = 0

    def _head_past_a_bound(self, unfinished_line: int) -> ApiError | None:
        """The refusal of the current request's line and headers if one of them is past a bound
        (``unfinished_line``: the bytes of the line still arriving), else None."""
        limits = self.limits
        longest = limits.max_header_line_bytes
        if len(self.url) > longest or (not self._line_ended and unfinished_line > longest):
            return ApiError(
                "invalid HTTP request",
                f"the request line is longer than {longest} bytes (MODELSERVE_MAX_HEADER_LINE_BYTES)",
            )
        headers = self.headers
        for index in range(self._headers_counted, len(headers)):  # each line once
            name, value = headers[index]
            line = len(name) + len(value) + 2  # "name: value"
            if line > longest:
                return _too_large("a header line is longer than", longest, "MODELSERVE_MAX_HEADER_LINE_BYTES")
            self._header_bytes += line + 2  # and its CRLF
        self._headers_counted = len(headers)
        if len(headers) > limits.max_header_count:
            return _too_large(
                "there are more header lines than", limits.max_header_count, "MODELSERVE_MAX_HEADER_COUNT"
            )
        if self._line_ended and unfinished_line > longest:
            return _too_large("a header line is longer than", longest, "MODELSERVE_MAX_HEADER_LINE_BYTES")
        request_line = len(self.url) + REQUEST_LINE_EXTRA if self._line_ended else 0
        if request_line + self._header_bytes + unfinished_line > limits.max_header_bytes:
            return _too_large(
                "the request line and headers are longer than",
                limits.max_header_bytes,
                "MODELSERVE_MAX_HEADER_BYTES",
            )
        return None

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _arm_body_timer(self, delay: float) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(delay, self._body_stalled)

    # --- timeouts -----------------------------------------------------------------------

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._answering():  # a pipelined request: its clock starts once the one before is answered
            self._arm_header_timer()
            return
        self._answer_and_close(
            RequestTimeout(
                "request timeout",
                f"the request headers were not complete within {self.limits.header_timeout_s:g} s",
            )
        )

    def _body_stalled(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        if self.flow.read_paused:  # we stopped reading (the handler is behind), not the client
            self._body_progress_at = self.loop.time()
            self._arm_body_timer(self.limits.body_timeout_s)
            return
        now = self.loop.time()
        slow_rate = self._body_rate_below_minimum(now)
        quiet_s = now - self._body_progress_at
        if quiet_s < self.limits.body_timeout_s and slow_rate is None:  # it grew since the timer was armed
            self._arm_body_timer(self.limits.body_timeout_s - quiet_s)
            return
        if slow_rate is not None:
            detail = (
                f"the request body arrived at {slow_rate:.0f} bytes/s, below the minimum of "
                f"{self.limits.body_min_rate_bps} bytes/s"
            )
        else:
            detail = f"the request body stopped arriving for {self.limits.body_timeout_s:g} s"
        self._abandon(cycle, RequestTimeout("request timeout", detail))

    def _body_rate_below_minimum(self, now: float) -> float | None:
        """The body's mean rate (bytes/s) if it is below the minimum once the body timeout has
        passed since it began, else None: a client that sends a byte just before each pause would
        run out would otherwise hold its connection for as long as its body lasts."""
        minimum = self.limits.body_min_rate_bps
        elapsed = now - self._body_started_at
        if not minimum or elapsed < self.limits.body_timeout_s:
            return None
        rate = self._body_bytes / elapsed
        return rate if rate < minimum else None

    def _abandon(self, cycle: Any, error: ApiError) -> None:
        """Answer ``status`` for a request whose handler may still run, and close: the handler
        then reads a disconnect, and whatever it sends later goes nowhere."""
        if not cycle.response_started:
            cycle.response_started = True
            request_id = request_id_of(cycle.scope["headers"])
            self._log_closing(error, request_id)
            reply = render_error(error, request_id)
            self.transport.write(http_answer(self.server_state.default_headers, reply, keep_alive=False))
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()

    # --- shutdown (SIGTERM) ---------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn's shutdown of this connection, as a drain (see the module docstring)."""
        if not self.config.drain_logged:  # type: ignore[attr-defined]
            self.config.drain_logged = True  # type: ignore[attr-defined]
            log.info(
                "draining HTTP connections: requests from now on are answered 503, those in flight have %g s",
                self.limits.drain_timeout_s,
            )
        self.draining = True
        self.app = answer_draining  # requests from now on, on this connection
        if self._answering():
            self.cycle.keep_alive = False  # the answer in flight carries Connection: close
        self._drain_timer = self.loop.call_later(self.limits.drain_timeout_s, self._drain_deadline)

    def _drain_deadline(self) -> None:
        self._drain_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._answering():
            if not cycle.response_started:
                self._abandon(cycle, DRAINING)
            # else an answer is being streamed: uvicorn's graceful timeout bounds it
        elif self._header_timer is not None:  # a request's headers still arriving
            self._answer_and_close(DRAINING)
        else:
            self.transport.close()

    def _answering(self) -> bool:
        """Whether a request of this connection is still being answered."""
        return self.cycle is not None and not self.cycle.response_complete


def _too_large(what: str, limit: int, setting: str) -> RequestHeaderFieldsTooLarge:
    unit = "" if setting.endswith("COUNT") else " bytes"
    return RequestHeaderFieldsTooLarge(
        f"request headers too large: {what} {limit}{unit} ({setting})", {"limit": limit, "setting": setting}
    )


class GuardedConfig(uvicorn.config.Config):
    """``uvicorn.Config`` serving HTTP with :class:`GuardedHttpToolsProtocol`, uvicorn's keep-alive
    timeout the idle timeout and its graceful-shutdown timeout bounded by the drain.

    It also carries what this worker's connections share: the direct lane (None until the
    service hands one over at start-up with :meth:`use_lane`, and None for good if it is off)
    and whether the drain was logged. The last one built in the process is :attr:`built`:
    the worker's check that BentoML really built its server through this class.
    """

    built: GuardedConfig | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        limits = get_settings()
        kwargs["http"] = GuardedHttpToolsProtocol
        kwargs["timeout_keep_alive"] = limits.idle_timeout_s
        kwargs["timeout_graceful_shutdown"] = limits.graceful_shutdown_s
        super().__init__(*args, **kwargs)
        self.direct_lane: DirectLane | None = None
        self.drain_logged = False
        GuardedConfig.built = self

    def use_lane(self, lane: DirectLane | None) -> None:
        self.direct_lane = lane


def install() -> None:
    """Make the uvicorn server this process builds (BentoML's worker: ``uvicorn.Config(...)``,
    looked up when the worker starts serving, after it imported the service) a guarded one, and
    the arbiter (``bentoml serve``'s main process) stop listening at SIGTERM.

    Each is checked once done (``service.transport.hooks``): a library that no longer lets
    itself be changed this way stops start-up here, naming the hook and its version.
    """
    limits = get_settings()  # a bad value stops start-up here, before any worker serves
    if uvicorn.Config is not GuardedConfig:
        uvicorn.Config = GuardedConfig  # type: ignore[misc]
        log.debug("HTTP connections: %s", limits)
    _stop_listening_at_sigterm()
    verify(INSTALLED_HOOKS)


def verify_server() -> GuardedConfig:
    """In a worker whose server is built: the hooks only a running server shows; its config."""
    verify(SERVER_HOOKS)
    return GuardedConfig.built  # type: ignore[return-value]


# --- the hooks (service.transport.hooks): what this module relies on, checked ----------------

# What GuardedHttpToolsProtocol and DirectCycle use of uvicorn's classes beyond their public
# interface: attributes set in their __init__, and the methods they override or call.
_PROTOCOL_ATTRIBUTES = (
    "config", "app", "loop", "logger", "access_logger", "access_log", "parser", "root_path",
    "timeout_keep_alive_task", "timeout_keep_alive", "server_state", "tasks", "transport", "flow",
    "client", "scope", "headers", "expect_100_continue", "cycle",
    "connection_made", "connection_lost", "data_received", "send_400_response", "on_message_begin",
    "on_headers_complete", "on_body", "on_message_complete", "on_response_complete", "shutdown",
    "timeout_keep_alive_handler",
)  # fmt: skip
_CYCLE_ATTRIBUTES = (
    "scope", "transport", "flow", "logger", "access_logger", "access_log", "default_headers",
    "message_event", "on_response", "disconnected", "keep_alive", "body", "more_body",
    "response_started", "response_complete", "run_asgi", "send", "receive",
)  # fmt: skip


def _uvicorn_config_replaced() -> str | None:
    if uvicorn.Config is not GuardedConfig:
        return "uvicorn.Config could not be replaced by GuardedConfig"
    return None


def _protocol_internals() -> str | None:
    """A protocol made as uvicorn makes one (not connected): has it what the subclass uses?"""
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never called
        return None

    config = uvicorn.config.Config(app, http="httptools")  # the base class: GuardedConfig.built stays
    loop = asyncio.new_event_loop()
    try:
        protocol = HttpToolsProtocol(config, ServerState(), {}, _loop=loop)
        return missing_attributes(protocol, _PROTOCOL_ATTRIBUTES)
    finally:
        loop.close()


def _cycle_internals() -> str | None:
    cycle = RequestResponseCycle(
        scope={},  # type: ignore[arg-type]
        transport=None,  # type: ignore[arg-type]
        flow=None,  # type: ignore[arg-type]
        logger=log,
        access_logger=log,
        access_log=False,
        default_headers=[],
        message_event=None,  # type: ignore[arg-type]
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )
    return missing_attributes(cycle, _CYCLE_ATTRIBUTES)


def _sigterm_patched() -> str | None:
    from circus.sighandler import SysHandler

    if not getattr(SysHandler.handle_term, "stops_listening", False):
        return "circus.sighandler.SysHandler.handle_term is not the patched one"
    return None


def _server_built_guarded() -> str | None:
    config = GuardedConfig.built
    if config is None:
        return "BentoML did not build this worker's server through uvicorn.Config (GuardedConfig)"
    if config.http_protocol_class is not GuardedHttpToolsProtocol:
        return f"the server's HTTP protocol is {config.http_protocol_class!r}, not GuardedHttpToolsProtocol"
    return None


INSTALLED_HOOKS = (
    Hook("uvicorn.Config replaced by GuardedConfig", "uvicorn", _uvicorn_config_replaced),
    Hook("HttpToolsProtocol internals used by GuardedHttpToolsProtocol", "uvicorn", _protocol_internals),
    Hook("RequestResponseCycle internals used by DirectCycle", "uvicorn", _cycle_internals),
    Hook("circus SysHandler.handle_term stops listening at SIGTERM", "kantoku", _sigterm_patched),
)
SERVER_HOOKS = (Hook("BentoML builds its server through uvicorn.Config", "bentoml", _server_built_guarded),)


def _stop_listening_at_sigterm() -> None:
    """At SIGTERM, the arbiter shuts its listening sockets before it stops the workers.

    The arbiter (circus, in ``bentoml serve``'s main process) opens the listening socket and
    its workers accept from it. At SIGTERM the workers stop accepting, but the socket itself
    stays open in the arbiter until it exits: the kernel goes on completing handshakes into its
    queue, nobody accepts them, and each such client, its request already sent, is reset when
    the arbiter exits seconds later. Shut down (``SHUT_RD``) at the signal, the socket stops
    listening for every process that shares it: a client that connects from then on is refused
    at once (nothing was sent, so it can retry elsewhere), while the connections already
    accepted drain as above. Only at SIGTERM to the arbiter, which stops the whole server: a
    worker that is stopped or restarted alone never touches the shared socket.
    """
    from circus.sighandler import SysHandler

    term = SysHandler.handle_term
    if getattr(term, "stops_listening", False):
        return

    def handle_term(handler: SysHandler) -> None:
        for listening in handler.controller.arbiter.sockets.values():
            # (OSError: not listening, e.g. a Unix socket that is gone, or one not bound yet)
            with contextlib.suppress(OSError):
                listening.shutdown(socket.SHUT_RD)
        term(handler)

    handle_term.stops_listening = True  # type: ignore[attr-defined]
    SysHandler.handle_term = handle_term  # type: ignore[method-assign]
