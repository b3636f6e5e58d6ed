"""Request ids: the client's ``X-Request-ID`` (when it is sane) or one made here, and the logs.

Every response carries the id in ``X-Request-ID``, every error body in ``"request_id"``, and
every log line written while a request is handled in ``request_id`` (``service.transport.middleware``
sets it), so an operator can find a client's failed request in the log.

Ids are made for the per-request CPU they cost (the service is tuned for it,
docs/evidence/benchmarks.md): a per-worker prefix (process id and random bits, so that workers and
restarts never share ids) and a counter, not a uuid4 per request.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import sys
import time
from contextvars import ContextVar

HEADER = b"x-request-id"
# Longest client id echoed; a longer one (or one with control or non-ASCII characters, which
# would let a client forge log lines or headers) is replaced by one made here.
MAX_CLIENT_ID_LENGTH = 128

CURRENT: ContextVar[str | None] = ContextVar("request_id", default=None)

_prefix = f"{os.getpid():x}{secrets.token_hex(3)}"
_counter = itertools.count(1)


def new_request_id() -> str:
    """A request id unique to this worker's life: ``<pid hex><6 random hex>-<counter>``."""
    return f"{_prefix}-{next(_counter)}"


def fork_safe_reset() -> None:
    """A new prefix in a forked child, so that it does not repeat its parent's ids."""
    global _prefix, _counter
    _prefix, _counter = f"{os.getpid():x}{secrets.token_hex(3)}", itertools.count(1)


os.register_at_fork(after_in_child=fork_safe_reset)


def client_request_id(value: bytes) -> str | None:
    """The client's id if it is 1..128 printable ASCII characters, else None (one is made)."""
    if not 0 < len(value) <= MAX_CLIENT_ID_LENGTH or not value.isascii():
        return None
    text = value.decode("ascii")
    return text if text.isprintable() else None


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's id: its sane ``X-Request-ID``, or a new one."""
    for name, value in headers:
        if name == HEADER:
            return client_request_id(value) or new_request_id()
    return new_request_id()


# --- logs ------------------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Gives every record ``request_id``: the id of the request being handled, or None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = CURRENT.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, request_id, pid, exception."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str) -> None:
    """The service's loggers: INFO and up, each record with its request id; JSON lines if asked."""
    logger = logging.getLogger("service")
    logger.setLevel(logging.INFO)
    for handler in [h for h in logger.handlers if getattr(h, "modelserve", False)]:
        logger.removeHandler(handler)
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.modelserve = True  # type: ignore[attr-defined]
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
        logger.propagate = False  # one line per record, not a second one in BentoML's format
    else:
        logger.propagate = True


def current() -> str:
    """The id of the request being handled (``JsonErrors`` or the direct lane set it), or a new one."""
    return CURRENT.get() or new_request_id()
