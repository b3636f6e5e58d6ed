"""Request header bounds against a real ``bentoml serve``, over raw sockets.

Each client below sends headers past a bound (``service.transport.connections``): one long
header, many small ones, headers that are long together, a header that grows slowly and never
ends, and a request line past the line bound. Each is answered with the JSON error shape once
the bound is crossed, while the client is still sending, and its connection is closed; a
normal request on a new connection is served afterwards. Requests just inside the bounds, and
pipelined requests whose reads mix one request's body with the next one's headers, are served.

No assert is on a time: each test checks the order of events (the answer came before the
client finished sending, and not before it crossed the bound), bounded in bytes and seconds.
The memory a flood of such clients costs is measured by bench/header_flood.py.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import Server, serve
from tests.test_slow_clients import DIGIT, Answer, connect, how_it_ends, read_answer, request_bytes

LINE_BOUND = 8192
TOTAL_BOUND = 65536
COUNT_BOUND = 100
START = b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def bounded(tmp_path_factory) -> Iterator[Server]:
    # The bounds are the defaults, written out so the tests below say what they test.
    with serve(
        tmp_path_factory.mktemp("header-limits"),
        workers="1",
        max_header_line_bytes=str(LINE_BOUND),
        max_header_bytes=str(TOTAL_BOUND),
        max_header_count=str(COUNT_BOUND),
    ) as running:
        yield running


def send_until_answered(sock: socket.socket, pieces: Iterator[bytes], wait_s: float) -> int:
    """Send ``pieces`` one by one until the server answers (waiting up to ``wait_s`` after
    each) or they run out; the bytes sent."""
    sent = 0
    for piece in pieces:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(piece)
        except OSError:  # closed by the server: its answer is waiting to be read
            break
        sent += len(piece)
        if select.select([sock], [], [], wait_s)[0]:
            break
    return sent


def refused(
    server: Server, head_start: bytes, pieces: Iterator[bytes], wait_s: float = 0.02
) -> tuple[int, Answer, str]:
    """Send a head start, then ``pieces``; the bytes sent, the answer and how the connection ended."""
    with connect(server) as sock:
        sock.sendall(head_start)
        sent = len(head_start) + send_until_answered(sock, pieces, wait_s)
        answer = read_answer(sock)
        ending = how_it_ends(sock)
    return sent, answer, ending


def assert_refused_431(answer: Answer, setting: str) -> None:
    assert answer.status == 431, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    body = answer.json()
    assert set(body) == {"error", "detail", "request_id"}, body
    assert body["error"].startswith("request headers too large") and setting in body["error"]
    assert body["detail"]["setting"] == setting
    assert body["request_id"] == answer.headers["x-request-id"]


def assert_still_serving(server: Server) -> None:
    with server.client() as client:
        assert client.post("/classify", content=DIGIT).status_code == 200


def test_one_long_header_is_refused_431_once_past_the_line_bound(bounded):
    # 16 MiB of one header value, 64 KiB at a time (the client: read whole, answered 200).
    pieces = (b"a" * 65536 for _ in range(256))
    sent, answer, ending = refused(bounded, START + b"X-Long: ", pieces)
    print(f"one long header: {answer.status} after {sent} bytes; then {ending}")
    assert sent < 16 * 1024 * 1024, "the server read the whole header before it answered"
    assert_refused_431(answer, "MODELSERVE_MAX_HEADER_LINE_BYTES")
    assert ending == "closed"
    assert_still_serving(bounded)


def test_many_small_headers_are_refused_431_once_past_the_count(bounded):
    # 400,000 headers (5 MiB) in the issue; here sent 50 at a time.
    pieces = (b"".join(b"X-%d: v\r\n" % (i * 50 + j) for j in range(50)) for i in range(8000))
    sent, answer, ending = refused(bounded, START, pieces)
    print(f"many small headers: {answer.status} after {sent} bytes; then {ending}")
    assert sent > len(START) + 50, "refused before the count was crossed"
    assert sent < 8000 * 50 * 8, "the server read every header before it answered"
    assert_refused_431(answer, "MODELSERVE_MAX_HEADER_COUNT")
    assert ending == "closed"
    assert_still_serving(bounded)


def test_headers_long_together_are_refused_431_once_past_the_total(bounded):
    # Lines under the line bound, 8 KiB at a time: the total is crossed at the ninth.
    line = b"X-Big-%03d: " + b"b" * 8000 + b"\r\n"
    pieces = (line % i for i in range(COUNT_BOUND - 10))
    sent, answer, ending = refused(bounded, START, pieces)
    print(f"headers long together: {answer.status} after {sent} bytes; then {ending}")
    assert sent > TOTAL_BOUND, "refused before the total was crossed"
    assert_refused_431(answer, "MODELSERVE_MAX_HEADER_BYTES")
    assert ending == "closed"
    assert_still_serving(bounded)


def test_a_slowly_growing_unfinished_header_is_refused_431_once_past_the_line_bound(bounded):
    # 512 bytes each 50 ms: the line bound is crossed at the 17th piece, long before the header
    # timeout (10 s); the client would go on for 1 MiB.
    pieces = (b"s" * 512 for _ in range(2048))
    sent, answer, ending = refused(bounded, START + b"X-Slow: ", pieces, wait_s=0.05)
    header_bytes = sent - len(START)
    print(
        f"slowly growing header: {answer.status} after {header_bytes} bytes of the header line; then {ending}"
    )
    assert header_bytes > LINE_BOUND, "refused before the line was past the bound"
    assert header_bytes < 2048 * 512, "the client sent the whole header before an answer"
    assert_refused_431(answer, "MODELSERVE_MAX_HEADER_LINE_BYTES")
    assert ending == "closed"
    assert_still_serving(bounded)


def test_a_request_line_past_the_line_bound_is_refused_400(bounded):
    pieces = (b"q" * 4096 for _ in range(256))
    sent, answer, ending = refused(bounded, b"GET /classify?", pieces)
    print(f"long request line: {answer.status} after {sent} bytes; then {ending}")
    assert sent > LINE_BOUND and sent < 256 * 4096
    assert answer.status == 400 and "MODELSERVE_MAX_HEADER_LINE_BYTES" in answer.json()["detail"], answer
    assert answer.headers["connection"] == "close"
    assert ending == "closed"
    assert_still_serving(bounded)


def test_requests_just_inside_the_bounds_are_served(bounded):
    just_long = request_bytes("POST", "/classify", DIGIT, X_Long="l" * (LINE_BOUND - len("X-Long: ")))
    many = (
        START
        + b"".join(b"X-%d: v\r\n" % i for i in range(COUNT_BOUND - 3))  # Host and Content-Type
        + b"Content-Length: %d\r\n\r\n" % len(DIGIT)
        + DIGIT
    )
    with connect(bounded) as sock:
        for request in (just_long, many):
            sock.sendall(request)
            answer = read_answer(sock)
            assert answer.status == 200, answer


def test_pipelined_requests_mixing_a_body_with_the_next_head_are_served(bounded):
    # A body far longer than the bounds, then the next request's head in the same send and
    # finished later: a read holds the end of one request and the start of the next.
    padded = DIGIT[:-1] + b" " * (4 * TOTAL_BOUND) + b"}"
    first = request_bytes("POST", "/classify", padded)
    second = request_bytes("POST", "/classify", DIGIT, X_Request_ID="second")
    cut = len(second) // 2
    with connect(bounded) as sock:
        sock.sendall(first + second[:cut])
        assert read_answer(sock).status == 200
        sock.sendall(second[cut:])
        answer = read_answer(sock)
    assert answer.status == 200 and answer.headers["x-request-id"] == "second", answer


@pytest.mark.parametrize(
    ("extra", "setting"),
    [
        (b"X-Long: " + b"l" * LINE_BOUND + b"\r\n", "MODELSERVE_MAX_HEADER_LINE_BYTES"),
        (b"".join(b"X-%d: v\r\n" % i for i in range(COUNT_BOUND)), "MODELSERVE_MAX_HEADER_COUNT"),
        (b"".join(b"X-%d: %s\r\n" % (i, b"t" * 8000) for i in range(9)), "MODELSERVE_MAX_HEADER_BYTES"),
    ],
    ids=["line", "count", "total"],
)
def test_a_whole_head_past_a_bound_in_one_send_is_refused_431(bounded, extra, setting):
    request = START + extra + b"Content-Length: %d\r\n\r\n" % len(DIGIT) + DIGIT
    with connect(bounded) as sock:
        sock.sendall(request)
        answer = read_answer(sock)
        ending = how_it_ends(sock)
    assert_refused_431(answer, setting)
    assert ending == "closed"
    assert_still_serving(bounded)
