"""One handler, two adapters: the direct lane and ASGI give the same answer, byte for byte.

A task request reaches ``service.api.handler.TaskHandler`` either through the direct lane
(inside the connection's protocol) or through ASGI (the mounted app's endpoint). The lane
takes ``POST /classify``; the same request with a query string (``?via=asgi``) is one the
lane leaves to ASGI, and the route is the same. Each request of the corpus below is sent
both ways against a real ``bentoml serve`` (one worker, so that both land on the same state)
and the two answers compared: status, every header but ``date``, in order, and the body
byte for byte. The corpus: every task route; valid bodies with and without their optional
fields (a seedless /generate included); every 4xx the body reader gives; 413; 415; 503 at
the in-flight limit and for a model that is not loaded; a 500 and a 504 from faults injected
into the classifier (tests/faulty_service.py). The metrics the two paths record, and the log
line of a failed request, are compared too. The whole comparison runs again on a server
started with ``python -O``: no ``assert`` decides anything in the service.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from harness.server import bentoml_command, service_env, start_server
from tests.conftest import COMMITTED_STORE, START_TIMEOUT_S
from tests.faulty_service import FAIL_PIXEL, SLOW_PIXEL

DIGIT = [[0, 0, 5, 13, 9, 1, 0, 0]] * 8
SERIES = [315.0 + 0.01 * i for i in range(200)]
MULTIPART = "multipart/form-data; boundary=x"
# (name, path, body bytes, content type)
CORPUS: list[tuple[str, str, bytes, str | None]] = [
    ("classify", "/classify", json.dumps({"images": [DIGIT, [[16] * 8] * 8]}).encode(), "application/json"),
    ("classify 4d", "/classify", json.dumps({"images": [[DIGIT]]}).encode(), "application/json"),
    ("classify, no content type", "/classify", json.dumps({"images": [DIGIT]}).encode(), None),
    ("classify +json", "/classify", json.dumps({"images": [DIGIT]}).encode(), "application/vnd.x+json"),
    ("forecast", "/forecast", json.dumps({"series": [SERIES, SERIES[:150]]}).encode(), "application/json"),
    ("generate", "/generate", json.dumps({"labels": [3, 7], "seed": 11}).encode(), "application/json"),
    ("generate array", "/generate", b'{"labels": [1], "seed": 5, "format": "array"}', "application/json"),
    ("malformed json", "/classify", b'{"images": [', "application/json"),
    ("not an object", "/classify", b"[1, 2]", "application/json"),
    ("missing field", "/classify", b"{}", "application/json"),
    ("unknown field", "/classify", json.dumps({"images": [DIGIT], "x": 1}).encode(), "application/json"),
    ("empty images", "/classify", b'{"images": []}', "application/json"),
    ("wrong shape", "/classify", b'{"images": [[1, 2, 3]]}', "application/json"),
    (
        "pixel out of range",
        "/classify",
        json.dumps({"images": [[[17] * 8] * 8]}).encode(),
        "application/json",
    ),
    ("pixel NaN", "/classify", b'{"images": [[[NaN, 0, 0, 0, 0, 0, 0, 0]]]}', "application/json"),
    ("too many items", "/classify", json.dumps({"images": [DIGIT] * 5000}).encode(), "application/json"),
    ("series too short", "/forecast", b'{"series": [[1.0, 2.0]]}', "application/json"),
    ("series not numbers", "/forecast", b'{"series": [["a"]]}', "application/json"),
    ("label out of range", "/generate", b'{"labels": [10]}', "application/json"),
    ("negative seed", "/generate", b'{"labels": [1], "seed": -1}', "application/json"),
    ("unknown format", "/generate", b'{"labels": [1], "format": "gif"}', "application/json"),
    ("text/plain", "/classify", json.dumps({"images": [DIGIT]}).encode(), "text/plain"),
    ("mixed-case json", "/classify", json.dumps({"images": [DIGIT]}).encode(), "Application/JSON"),
    ("not multipart", "/classify_image", b"{}", "application/json"),
    ("bad multipart", "/classify_image", b"--x\r\nnonsense", MULTIPART),
    ("body too large", "/classify", b'{"images": [' + b" " * 300_000 + b"]}", "application/json"),
    ("forecaster not loaded", "/forecast", json.dumps({"series": [SERIES]}).encode(), "application/json"),
    (
        "injected failure: 500",
        "/classify",
        json.dumps({"images": [[[FAIL_PIXEL] + [0] * 7] + [[0] * 8] * 7]}).encode(),
        "application/json",
    ),
    (
        "past the deadline: 504",
        "/classify",
        json.dumps({"images": [[[SLOW_PIXEL] + [0] * 7] + [[0] * 8] * 7]}).encode(),
        "application/json",
    ),
]
SETTINGS = {
    "MODELSERVE_WORKERS": "1",
    "MODELSERVE_MAX_BODY_BYTES": "200000",
    "MODELSERVE_MAX_INFLIGHT_PER_WORKER": "2",
    "MODELSERVE_HTTP_TIMEOUT_S": "1",
}


def start(tmp: Path, store: Path, optimize: bool):
    def command(port: int) -> list[str]:
        serve, *options = bentoml_command(port)[1:]
        return [bentoml_command(port)[0], serve, "tests.faulty_service:ModelService", *options]

    extra = {"PYTHONOPTIMIZE": "1"} if optimize else {}
    env = service_env(store, SETTINGS, extra)
    # /livez: the forecaster of this store never loads, so the server is never ready.
    return start_server(
        command, env, name="one-handler", probe="/livez", timeout_s=START_TIMEOUT_S, workdir=tmp
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The committed store with a forecaster whose file does not match its sha256 (not loaded)."""
    store = tmp_path_factory.mktemp("store") / "model_store"
    shutil.copytree(COMMITTED_STORE, store)
    for version in (store / "forecaster").iterdir():
        model = version / "model.onnx"
        if model.exists():
            model.write_bytes(model.read_bytes() + b"\0")
    return store


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "optimized"])
def server(request, tmp_path_factory, store) -> Iterator:
    running = start(tmp_path_factory.mktemp("server"), store, optimize=request.param)
    try:
        with httpx.Client(base_url=running.url, timeout=30) as http:
            for _ in range(600):  # the other models load and warm up
                models = http.get("/v2/models/generator/ready")
                if models.status_code == 200 and http.get("/v2/models/classifier/ready").status_code == 200:
                    break

                time.sleep(0.2)
        yield running
    finally:
        running.stop()


def send(url: str, path: str, body: bytes, content_type: str | None, request_id: str) -> httpx.Response:
    headers = {"x-request-id": request_id}
    if content_type is not None:
        headers["content-type"] = content_type
    with httpx.Client(base_url=url, timeout=30) as http:
        return http.post(path, content=body, headers=headers)


def comparable(answer: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(k.lower(), v) for k, v in answer.headers.raw if k.lower() != b"date"]
    return answer.status_code, headers, answer.content


def failed_lines(log: str, request_id: str) -> list[str]:
    return [
        re.sub(r"^.*?(POST \S+ answered)", r"\1", line).replace(request_id, "<id>")
        for line in log.splitlines()
        if f"request_id={request_id})" in line and " answered " in line
    ]


@pytest.mark.parametrize(("name", "path", "body", "content_type"), CORPUS, ids=[c[0] for c in CORPUS])
def test_the_lane_and_asgi_answer_the_same(server, name, path, body, content_type):
    direct = send(server.url, path, body, content_type, f"lane-{name}")
    via_asgi = send(server.url, path + "?via=asgi", body, content_type, f"asgi-{name}")
    lane_answer, asgi_answer = comparable(direct), comparable(via_asgi)
    # The request ids differ by design: compare them apart.
    assert direct.headers["x-request-id"] == f"lane-{name}"
    assert via_asgi.headers["x-request-id"] == f"asgi-{name}"
    lane_answer = (lane_answer[0], lane_answer[1], lane_answer[2].replace(b"lane-", b"<id>-"))
    asgi_answer = (asgi_answer[0], asgi_answer[1], asgi_answer[2].replace(b"asgi-", b"<id>-"))
    drop_id = lambda headers: [(k, v) for k, v in headers if k != b"x-request-id"]  # noqa: E731
    assert lane_answer[0] == asgi_answer[0], (direct.text, via_asgi.text)
    assert drop_id(lane_answer[1]) == drop_id(asgi_answer[1])
    assert lane_answer[2] == asgi_answer[2]
    if direct.status_code >= 400:
        body_json = direct.json()
        assert (
            set(body_json) <= {"error", "detail", "request_id"} and body_json["request_id"] == f"lane-{name}"
        )
        log = server.log_text()
        assert failed_lines(log, f"lane-{name}") == failed_lines(log, f"asgi-{name}")
        assert len(failed_lines(log, f"lane-{name}")) == 1, log[-3000:]


def test_a_seedless_generate_is_answered_by_the_pipeline_on_both_paths(server):
    body = b'{"labels": [2, 4], "format": "array"}'
    for path in ("/generate", "/generate?via=asgi"):
        drawn = send(server.url, path, body, "application/json", "seedless")
        assert drawn.status_code == 200, drawn.text
        seed = drawn.json()["seed"]
        assert isinstance(seed, int) and seed >= 0
        again = json.dumps({"labels": [2, 4], "format": "array", "seed": seed}).encode()
        # The seed the answer reports gives the same images, through the other path.
        other = "/generate?via=asgi" if path == "/generate" else "/generate"
        replay = send(server.url, other, again, "application/json", "seedless")
        assert replay.json()["images"] == drawn.json()["images"]


def test_at_the_in_flight_limit_both_paths_refuse_alike(server):
    url = urlsplit(server.url)
    held = []
    try:
        for _ in range(2):  # two requests whose bodies never finish hold both places
            sock = socket.create_connection((url.hostname, url.port), timeout=10)
            sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            held.append(sock)

        time.sleep(0.3)
        body = json.dumps({"images": [DIGIT]}).encode()
        direct = send(server.url, "/classify", body, "application/json", "full")
        via_asgi = send(server.url, "/classify?via=asgi", body, "application/json", "full")
    finally:
        for sock in held:
            sock.close()
    assert direct.status_code == via_asgi.status_code == 503
    assert comparable(direct) == comparable(via_asgi)
    assert direct.headers["retry-after"] == "1"


def test_both_paths_record_the_same_metrics(server):
    def counts() -> dict[str, float]:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            text = http.get("/metrics").text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(
                ("modelserve_requests_total", "modelserve_errors_total", "modelserve_items_total")
            )
        }

    def delta(suffix: str) -> dict[str, float]:
        before = counts()
        for name, path, body, content_type in CORPUS:
            if "deadline" not in name:
                send(server.url, path + suffix, body, content_type, "metrics")
        after = counts()
        return {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}

    lane, asgi = delta(""), delta("?via=asgi")
    assert lane == asgi
    assert any("errors_total" in k for k in lane) and any("requests_total" in k for k in lane)
