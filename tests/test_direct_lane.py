"""The direct lane (service.transport.direct_lane): the same answers as the ASGI path, and never a
middleware skipped.

Against a real ``bentoml serve``: a task request the lane answers and the same request sent
with a query string (which the lane leaves to ASGI) get the same answer, good or bad; requests
pipelined on one connection are answered in order; and a service with one more middleware at
each level (tests/stamping_service.py) stamps every task answer, with a log line saying the
lane is off and why. Which requests the lane takes is checked on the real object.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from harness.server import bentoml_command, service_env, start_server
from service.transport.direct_lane import DirectLane, LaneParts
from tests.conftest import COMMITTED_STORE, START_TIMEOUT_S

DIGIT = [[0, 0, 5, 13, 9, 1, 0, 0]] * 8
GOOD = {
    "/classify": {"images": [DIGIT, [[16] * 8] * 8]},
    "/forecast": {"series": [[315.0 + 0.01 * i for i in range(200)], [340.0 + 0.02 * i for i in range(150)]]},
    "/generate": {"labels": [3, 7], "seed": 11, "format": "array"},
}
BAD = [
    ("/classify", {"images": [[[17] * 8] * 8]}, "application/json"),  # out of range
    ("/classify", {"images": "nope"}, "application/json"),
    ("/forecast", {"series": [[1.0, 2.0]]}, "application/json"),  # too short a history
    ("/generate", {"labels": [10]}, "application/json"),
    ("/classify", {"images": [DIGIT]}, "text/plain"),  # not JSON: 415 from the one handler
    ("/classify", {"images": [DIGIT]}, "Application/JSON"),  # media types are read as sent
]


def post(http, path: str, body, content_type: str = "application/json", request_id: str = "lane-test"):
    return http.post(
        path,
        content=json.dumps(body).encode(),
        headers={"content-type": content_type, "x-request-id": request_id},
    )


@pytest.mark.parametrize("path", sorted(GOOD))
def test_an_answer_is_the_same_through_the_lane_and_through_asgi(server, path):
    with server.client() as http:
        direct = post(http, path, GOOD[path])
        through_asgi = post(http, path + "?via=asgi", GOOD[path])
    assert direct.status_code == through_asgi.status_code == 200, direct.text
    assert direct.json() == through_asgi.json()
    for answer in (direct, through_asgi):
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-request-id"] == "lane-test"


@pytest.mark.parametrize(("path", "body", "content_type"), BAD)
def test_a_refusal_is_the_same_through_the_lane_and_through_asgi(server, path, body, content_type):
    with server.client() as http:
        direct = post(http, path, body, content_type)
        through_asgi = post(http, path + "?via=asgi", body, content_type)
        assert http.get("/readyz").status_code == 200
    assert 400 <= direct.status_code < 500
    assert direct.status_code == through_asgi.status_code
    assert direct.json() == through_asgi.json()
    assert direct.json()["request_id"] == "lane-test"


def test_the_lane_is_on_in_every_worker_and_says_so(server):
    with server.client() as http:
        for _ in range(20):  # connections land on either worker
            with server.client() as fresh:
                assert post(fresh, "/classify", GOOD["/classify"]).status_code == 200
        assert http.get("/readyz").status_code == 200
        metrics = http.get("/metrics").text
    assert "direct lane on for /classify, /classify_image, /forecast, /generate" in server.log_text()
    assert "direct lane off" not in server.log_text()
    [info] = [line for line in metrics.splitlines() if line.startswith("modelserve_runtime_info{")]
    assert 'direct_lane="on"' in info and 'direct_lane_reason=""' in info, info


def test_requests_pipelined_on_one_connection_are_answered_in_order(server):
    url = urlsplit(server.url)
    bodies = [json.dumps({"images": [[[v] * 8] * 8]}).encode() for v in (0, 8, 16)]
    wire = b"".join(
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(b)}\r\nX-Request-ID: pipelined-{i}\r\n\r\n".encode()
        + b
        for i, b in enumerate(bodies)
    )
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(wire)  # all three at once: the 2nd and 3rd arrive while the 1st is answered
        data = b""
        while data.count(b"HTTP/1.1 200") < 3 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
    ids = [line.split(b": ")[1] for line in data.split(b"\r\n") if line.lower().startswith(b"x-request-id")]
    assert ids == [b"pipelined-0", b"pipelined-1", b"pipelined-2"]


def test_a_middleware_added_the_ordinary_way_applies_to_task_routes_and_turns_the_lane_off(tmp_path):
    def command(port: int) -> list[str]:
        serve, *options = bentoml_command(port)[1:]
        return [bentoml_command(port)[0], serve, "tests.stamping_service:ModelService", *options]

    env = service_env(COMMITTED_STORE, {"MODELSERVE_WORKERS": "1"})
    server = start_server(command, env, name="stamped", timeout_s=START_TIMEOUT_S, workdir=tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answers = [post(http, path, body) for path, body in GOOD.items()]
            answers.append(post(http, "/classify", {"images": "nope"}))
            metrics = http.get("/metrics").text
        log = server.log_path.read_text(errors="replace")
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200, 200, 200, 400]
    [info] = [line for line in metrics.splitlines() if line.startswith("modelserve_runtime_info{")]
    assert 'direct_lane="off"' in info and "StampHeader" in info, info
    for answer in answers:
        assert answer.headers.get("x-stamped-by-app") == "yes", answer.request.url
        assert answer.headers.get("x-stamped-by-bentoml") == "yes", answer.request.url
    assert "direct lane off" in log
    assert "BentoML's middleware StampHeader" in log and "the app's middleware StampHeader" in log


# --- which requests the lane takes (the real object, no server) ---------------------------------


LANE = DirectLane(LaneParts(None, ("/classify",), 1000, None, None))
HEADERS = [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", b"100")]


@pytest.mark.parametrize(
    ("method", "url", "headers", "taken"),
    [
        (b"POST", b"/classify", HEADERS, True),
        (b"POST", b"/classify", [*HEADERS[:1], HEADERS[2]], True),  # no content type: JSON
        (
            b"POST",
            b"/classify",
            [(b"content-type", b"application/vnd.x+json; charset=utf-8"), HEADERS[2]],
            True,
        ),
        (b"GET", b"/classify", HEADERS, False),
        (b"POST", b"/classify?x=1", HEADERS, False),  # a query string: ASGI
        (b"POST", b"/classify/", HEADERS, False),
        (b"POST", b"/v2/models/classifier/infer", HEADERS, False),
        (b"POST", b"/classify", HEADERS[:2], False),  # no Content-Length
        (b"POST", b"/classify", [*HEADERS[:2], (b"content-length", b"0")], False),
        (b"POST", b"/classify", [*HEADERS[:2], (b"content-length", b"1001")], False),  # over the limit
        (b"POST", b"/classify", [*HEADERS, (b"content-length", b"100")], False),  # repeated
        (b"POST", b"/classify", [*HEADERS[:2], (b"content-length", b"+100")], False),
        (b"POST", b"/classify", [*HEADERS, (b"transfer-encoding", b"chunked")], False),
        (b"POST", b"/classify", [*HEADERS, (b"expect", b"100-continue")], False),
        # Any media type: the one handler answers 415 as the ASGI path does.
        (b"POST", b"/classify", [(b"content-type", b"text/plain"), HEADERS[2]], True),
        (b"POST", b"/classify", [(b"content-type", b"Application/JSON"), HEADERS[2]], True),
    ],
)
def test_which_requests_the_lane_takes(method, url, headers, taken):
    assert (LANE.path_for(method, url, headers) is not None) == taken
