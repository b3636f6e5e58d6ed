"""Admission control on a real server: a burst beyond the in-flight limit is refused, and only it.

A real ``bentoml serve`` (one worker, in-flight limit 1) gets bursts of concurrent /classify
requests, each on its own connection, all released at once. Bounded: at most MAX_BURSTS bursts
of BURST requests, each with a client timeout. No timing is asserted: what is checked is that
refusals are 503 + Retry-After with a JSON error body carrying the request id, that every
admitted request is answered correctly, and that the server answers normally afterwards.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sklearn.datasets import load_digits

from tests.conftest import serve

BURST = 24  # concurrent requests per burst, one connection each
MAX_BURSTS = 5  # bursts sent until one meets the limit
IMAGES_PER_REQUEST = 256  # big enough that a request is still in flight when the next arrives

IMAGES = load_digits().images[:IMAGES_PER_REQUEST].tolist()


def burst(url: str, n: int) -> list[httpx.Response]:
    """``n`` requests on ``n`` connections, released together by a barrier."""
    barrier = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as http:
            barrier.wait(timeout=30)
            return http.post("/classify", json={"images": IMAGES}, headers={"x-request-id": f"burst-{i}"})

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("overload"), workers="1", max_inflight_per_worker="1") as server:
        yield server


@pytest.fixture(scope="module")
def expected_labels(limited_server) -> list[int]:
    """The server's own answer to the burst's body, asked alone (never beyond the limit)."""
    with limited_server.client() as http:
        answer = http.post("/classify", json={"images": IMAGES})
    assert answer.status_code == 200, answer.text
    return answer.json()["labels"]


def test_a_burst_beyond_the_limit_gets_503_with_retry_after_and_the_rest_are_answered(
    limited_server, expected_labels
):
    responses: list[httpx.Response] = []
    for _ in range(MAX_BURSTS):
        responses += burst(limited_server.url, BURST)
        if any(r.status_code == 503 for r in responses):
            break
    refused = [r for r in responses if r.status_code == 503]
    accepted = [r for r in responses if r.status_code != 503]
    assert refused, f"{len(responses)} concurrent requests never met an in-flight limit of 1"
    for r in refused:
        assert r.headers["retry-after"] == "1"
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert "overloaded" in body["error"]
        assert body["detail"]["setting"] == "MODELSERVE_MAX_INFLIGHT_PER_WORKER"
        assert body["request_id"] == r.headers["x-request-id"] and body["request_id"].startswith("burst-")
    assert accepted, "every request was refused"
    for r in accepted:
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == expected_labels


def test_the_server_answers_normally_after_a_burst(limited_server, expected_labels):
    burst(limited_server.url, BURST)
    with limited_server.client() as http:
        for _ in range(5):  # one at a time: never beyond the limit
            answer = http.post("/classify", json={"images": IMAGES})
            assert answer.status_code == 200 and answer.json()["labels"] == expected_labels
        assert http.get("/readyz").status_code == 200
        assert http.get("/metrics").status_code == 200


def test_refusals_are_logged_as_a_summary_not_one_line_each(limited_server):
    burst(limited_server.url, BURST)
    log = limited_server.log_text()
    assert "overloaded: refused" in log
    assert "answered 503" not in log, "a refused request got a log line of its own"
