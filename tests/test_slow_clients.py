"""Slow and stalled clients against a real ``bentoml serve``, over raw sockets.

The server runs with 2 s header, idle and body timeouts (``service.transport.connections``) and a 64 KiB
body limit. Each client below would hold its connection as long as it liked without them:
headers dripped one byte a second, a connection that sends nothing, a keep-alive connection
left idle, a body that stops half way, a chunked body that goes on past the 413. Meanwhile
other clients are served. An over-long request line is answered with the JSON error shape.
Whether BentoML and uvicorn still offer the places the module hooks into is checked at every start
(service.transport.hooks; tests/test_hooks.py).

No assert is on a time: each test checks the order of events (the answer came before the
client finished sending; the connection was closed while the client still waited), and each
is bounded in bytes and seconds. Figures in docs/evidence/reliability.md.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from service.platform.settings import SettingsError, get_settings
from tests.conftest import Server, serve

TIMEOUT_S = 2  # header, idle and body timeouts of the server under test
BODY_LIMIT = 65536
# Longer than any timeout above: a read that waits this long means the server never closed.
PATIENCE_S = 15.0
DIGIT = json.dumps({"images": [[[0, 0, 5, 13, 9, 1, 0, 0]] * 8]}).encode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def connect(server: Server) -> socket.socket:
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=PATIENCE_S)
    sock.settimeout(PATIENCE_S)
    return sock


def request_bytes(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    """One HTTP/1.1 request (keep-alive, Content-Length unless a Transfer-Encoding is given)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if body and "Transfer_Encoding" not in headers:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answer(sock: socket.socket) -> Answer:
    """One whole answer (Content-Length framed); ConnectionError if the server closed or reset
    the connection before it, TimeoutError if nothing came in PATIENCE_S."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionAbortedError(f"closed before an answer ({len(data)} bytes came)")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionAbortedError("closed in the middle of an answer")
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body[:length])


def how_it_ends(sock: socket.socket) -> str:
    """What the server does next on this connection: "closed" (EOF), "reset", "data" or "open"
    (nothing in PATIENCE_S)."""
    try:
        chunk = sock.recv(65536)
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "open"
    return "data" if chunk else "closed"


def assert_timeout_answer(answer: Answer, what: str) -> None:
    assert answer.status == 408, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    assert what in answer.json()["detail"] and answer.json()["error"] == "request timeout"
    assert answer.json()["request_id"] == answer.headers["x-request-id"]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[Server]:
    with serve(
        tmp_path_factory.mktemp("slow-clients"),
        workers="1",
        header_timeout_s=str(TIMEOUT_S),
        idle_timeout_s=str(TIMEOUT_S),
        body_timeout_s=str(TIMEOUT_S),
        max_body_bytes=str(BODY_LIMIT),
    ) as running:
        yield running


def test_headers_sent_one_byte_a_second_are_answered_408_and_closed(guarded):
    request = request_bytes("POST", "/classify", DIGIT)
    drip = 20  # bytes at 1 byte/s (the slow client took 20 s), then the rest at once
    sent = 0
    with connect(guarded) as sock:
        started = time.monotonic()
        for byte in request[:drip]:
            sock.sendall(bytes([byte]))
            sent += 1
            if select.select([sock], [], [], 1.0)[0]:
                break
        answered_after_s = time.monotonic() - started
        if sent == drip:
            sock.sendall(request[drip:])
            sent = len(request)
        answer = read_answer(sock)
        ending = how_it_ends(sock)
    print(
        f"slow headers: answered {answer.status} after {sent} bytes, {answered_after_s:.1f} s; then {ending}"
    )
    assert sent < drip, f"the server waited for all {len(request)} bytes and answered {answer.status}"
    assert_timeout_answer(answer, "headers")
    assert ending == "closed"


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with connect(guarded) as sock:
        started = time.monotonic()
        ending = how_it_ends(sock)
        print(f"silent connection: {ending} after {time.monotonic() - started:.1f} s")
    assert ending == "closed"


def test_a_keep_alive_connection_left_idle_is_closed(guarded):
    with connect(guarded) as sock:
        sock.sendall(request_bytes("POST", "/classify", DIGIT))
        assert read_answer(sock).status == 200
        started = time.monotonic()
        ending = how_it_ends(sock)
        print(f"idle keep-alive connection: {ending} after {time.monotonic() - started:.1f} s")
    assert ending == "closed"


def test_a_body_that_stops_half_way_is_answered_408_and_closed(guarded):
    request = request_bytes("POST", "/classify", DIGIT, X_Request_ID="stalled-body")
    with connect(guarded) as sock:
        sock.sendall(request[: len(request) - len(DIGIT) // 2])
        started = time.monotonic()
        answer = read_answer(sock)
        print(f"stalled body: {answer.status} after {time.monotonic() - started:.1f} s")
        assert_timeout_answer(answer, "body")
        assert answer.headers["x-request-id"] == "stalled-body"
        assert how_it_ends(sock) == "closed"
    # The worker is fine: the handler that waited for the body saw the client leave.
    with guarded.client() as client:
        assert client.post("/classify", content=DIGIT).status_code == 200


def test_a_body_that_never_pauses_long_but_trickles_is_answered_408_and_closed(guarded):
    # 10 bytes every 0.5 s: no pause reaches the 2 s body timeout, but 20 bytes/s is far below
    # the minimum rate (MODELSERVE_BODY_MIN_RATE_BPS, 1024 by default).
    body = b" " * 5000
    request = request_bytes("POST", "/classify", body, X_Request_ID="trickle")
    head = request[: len(request) - len(body)]
    sent = 0
    with connect(guarded) as sock:
        sock.sendall(head)
        started = time.monotonic()
        while sent < len(body) and not select.select([sock], [], [], 0.5)[0]:
            sock.sendall(body[sent : sent + 10])
            sent += 10
        answer = read_answer(sock)
        ending = how_it_ends(sock)
    took_s = time.monotonic() - started
    print(f"trickled body: {answer.status} after {sent} bytes, {took_s:.1f} s; then {ending}")
    assert sent < len(body), "the whole body trickled in and was answered"
    assert_timeout_answer(answer, "bytes/s")
    assert answer.headers["x-request-id"] == "trickle"
    assert ending == "closed"


def test_a_chunked_body_past_the_limit_gets_413_and_the_connection_is_closed(guarded):
    chunk = b"%x\r\n%s\r\n" % (4096, b" " * 4096)
    most_chunks = 2 * BODY_LIMIT // 4096  # twice the limit, then the body is ended
    with connect(guarded) as sock:
        sock.sendall(
            request_bytes("POST", "/classify", Transfer_Encoding="chunked", Content_Type="application/json")
        )
        sent = 0
        while sent < most_chunks and not select.select([sock], [], [], 0.05)[0]:
            sock.sendall(chunk)
            sent += 1
        answer = read_answer(sock)
        # A client that goes on sending after the answer (many do, until they read it).
        try:
            for _ in range(8):
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed already: what this test wants
            pass
        ending = how_it_ends(sock)
    print(f"chunked body: {answer.status} after {sent} chunks of 4096 bytes; then {ending}")
    assert answer.status == 413 and answer.json()["error"]
    assert answer.headers.get("connection") == "close"
    assert ending in ("closed", "reset"), "the server kept the connection to read a body it refused"


def test_an_over_long_request_line_gets_a_json_400(guarded):
    with connect(guarded) as sock:
        sock.sendall(b"GET /classify?" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_answer(sock)
        ending = how_it_ends(sock)
    assert answer.status == 400, answer
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"error", "detail", "request_id"}, body
    assert body["request_id"] == answer.headers["x-request-id"]
    assert ending == "closed"


def test_other_clients_are_served_while_slow_ones_hold_connections(guarded):
    partial = request_bytes("POST", "/classify", DIGIT)[:20]
    slow = [connect(guarded) for _ in range(32)]
    try:
        for sock in slow[:16]:  # half: headers begun and never finished; half: nothing at all
            sock.sendall(partial)
        with guarded.client() as client:
            statuses = [client.post("/classify", content=DIGIT).status_code for _ in range(20)]
        still_open = sum(not select.select([s], [], [], 0)[0] for s in slow)
        endings = []
        for sock in slow[:16]:
            endings.append(read_answer(sock).status)
        endings += [how_it_ends(sock) for sock in slow[16:]]
    finally:
        for sock in slow:
            sock.close()
    print(
        f"served meanwhile: {statuses.count(200)} of 20; slow connections still open after them: {still_open}"
    )
    assert statuses == [200] * 20
    assert endings == [408] * 16 + ["closed"] * 16
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        assert client.get("/readyz").status_code == 200


def test_a_bad_timeout_setting_stops_start_up_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MODELSERVE_HEADER_TIMEOUT_S", "0")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="MODELSERVE_HEADER_TIMEOUT_S"):
            get_settings()
    finally:
        get_settings.cache_clear()
