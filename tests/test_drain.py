"""SIGTERM under load: every request on an open connection is answered, none is reset.

A real ``bentoml serve`` (2 workers) holds 64 keep-alive connections that were each served
once and are idle, 64 with a request in flight (headers and part of the body sent) and 4 whose
body never ends. SIGTERM goes to the server's main process, as Kubernetes sends it. Once the
workers have begun draining, the 64 in-flight requests get the rest of their body and each
idle connection gets a later request. Every one of them must be answered with a whole HTTP
answer (served, or 503 with ``Connection: close`` and ``Retry-After``), and no connection reset;
the 4 stuck requests get a 503 at the drain deadline; a client that connects after SIGTERM is
refused (the server no longer listens), not accepted and reset later; then the whole process
tree exits within the Kubernetes grace period. Bounded: 196 requests, at most about a minute. Figures in
docs/evidence/reliability.md.
"""

from __future__ import annotations

import collections
import socket
import time
from urllib.parse import urlsplit

from harness.server import bentoml_serve
from tests.conftest import COMMITTED_STORE
from tests.test_slow_clients import DIGIT, Answer, how_it_ends, read_answer, request_bytes

IN_FLIGHT = 64
LATER = 64
STUCK = 4
DRAIN_TIMEOUT_S = 4
# deploy/kubernetes: terminationGracePeriodSeconds 30, of which preStop sleeps 10 before SIGTERM.
GRACE_AFTER_SIGTERM_S = 20
DRAIN_LOG_LINE = "draining HTTP connections"


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=15)
    sock.settimeout(15)
    return sock


def outcome(sock: socket.socket) -> tuple[str, Answer | None]:
    """("answered", answer) for a whole answer, else ("reset" | "closed" | "timeout", None)."""
    try:
        return "answered", read_answer(sock)
    except ConnectionResetError:
        return "reset", None
    except ConnectionAbortedError:
        return "closed", None
    except TimeoutError:
        return "timeout", None


def wait_for_log(server, text: str, count: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = server.log_text().count(text)
        if seen >= count:
            return seen
        time.sleep(0.1)
    return server.log_text().count(text)


def assert_answered_or_refused_politely(answers: list[tuple[str, Answer | None]], what: str) -> None:
    kinds = collections.Counter(kind for kind, _ in answers)
    assert kinds == {"answered": len(answers)}, f"{what}: {dict(kinds)}"
    for _, answer in answers:
        assert answer.status in (200, 503), (what, answer)
        if answer.status == 503:
            assert answer.headers.get("connection") == "close", (what, answer)
            assert answer.headers.get("retry-after"), (what, answer)
            assert set(answer.json()) >= {"error", "detail"}


def test_sigterm_answers_every_request_on_open_connections_and_exits_in_bounded_time(tmp_path):
    request = request_bytes("POST", "/classify", DIGIT)
    settings = {
        "MODELSERVE_WORKERS": "2",
        "MODELSERVE_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        # Longer than the drain: idle connections stay open until the drain deadline, and the
        # stuck bodies are ended by the drain, not by the body timeout.
        "MODELSERVE_IDLE_TIMEOUT_S": "30",
        "MODELSERVE_BODY_TIMEOUT_S": "30",
        # BentoML's own per-request timeout (504) must not end the in-flight requests first.
        "MODELSERVE_HTTP_TIMEOUT_S": "5",
    }
    with bentoml_serve(COMMITTED_STORE, settings, workdir=tmp_path, name="server") as server:
        idle = [connect(server.url) for _ in range(LATER)]
        for sock in idle:
            sock.sendall(request)
        first = [outcome(sock) for sock in idle]
        assert [a.status for _, a in first] == [200] * LATER
        in_flight = [connect(server.url) for _ in range(IN_FLIGHT)]
        for sock in in_flight:
            sock.sendall(request[:-10])
        stuck = [connect(server.url) for _ in range(STUCK)]
        for sock in stuck:
            sock.sendall(request[: len(request) - len(DIGIT) // 2])
        time.sleep(0.5)  # the workers read what was sent

        server.send_sigterm()
        draining_workers = wait_for_log(server, DRAIN_LOG_LINE, 2, timeout_s=4)
        for sock in in_flight:
            sock.sendall(request[-10:])
        for sock in idle:
            sock.sendall(request)
        finished = [outcome(sock) for sock in in_flight]
        later = [outcome(sock) for sock in idle]
        ended = [outcome(sock) for sock in stuck]
        closings = collections.Counter(how_it_ends(s) for s in in_flight + idle + stuck)
        try:  # a connection opened after SIGTERM: refused, the server no longer listens
            late_conn = connect(server.url)
            late_conn.sendall(request)
            new_connection = outcome(late_conn)[0]
        except OSError as exc:
            new_connection = type(exc).__name__
        exited_after_s = server.wait_for_exit(timeout_s=GRACE_AFTER_SIGTERM_S + 10)
        for sock in in_flight + idle + stuck:
            sock.close()

    def statuses(answers):
        return dict(collections.Counter(a.status if a else kind for kind, a in answers))

    print(
        f"\nworkers draining: {draining_workers}; in flight at SIGTERM: {statuses(finished)}; "
        f"later requests on open connections: {statuses(later)}; stuck bodies: {statuses(ended)}; "
        f"then: {dict(closings)}; new connection after SIGTERM: {new_connection}; "
        f"process tree gone after {exited_after_s and round(exited_after_s, 1)} s"
    )
    assert_answered_or_refused_politely(finished, "in flight at SIGTERM")
    assert all(a.headers.get("connection") == "close" for _, a in finished)
    assert_answered_or_refused_politely(later, "later requests on open connections")
    assert [a.status for _, a in ended] == [503] * STUCK, statuses(ended)
    assert closings["reset"] == 0, dict(closings)
    assert new_connection == "ConnectionRefusedError", new_connection
    assert exited_after_s is not None and exited_after_s < GRACE_AFTER_SIGTERM_S, exited_after_s
