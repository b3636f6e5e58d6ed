"""A flood of failed requests writes a bounded number of log lines (MODELSERVE_LOG_FAILED_BURST).

First :class:`FailedRequestLog` alone, on a clock the test moves; then a real ``bentoml serve``
with a burst of 5 a 2 s interval: a flood of bad requests writes 5 lines and one summary that
counts the rest exactly, the metrics count every request, and a bad request after the interval
is logged again.
"""

from __future__ import annotations

import logging
import re
import time

import httpx
import pytest

from service.platform.errors import MAX_KINDS, FailedRequestLog
from store_format import latest_version
from tests.conftest import COMMITTED_STORE, serve

BURST = 5
INTERVAL_S = 2.0
FLOOD = 300
# Long enough for the worker's lines to reach the log file; not an assert on the server's speed.
PATIENCE_S = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def summaries(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "were not logged" in r.getMessage()]


def test_the_first_lines_of_each_kind_are_admitted_then_counted(caplog):
    clock = Clock()
    limiter = FailedRequestLog(burst=3, interval_s=10, clock=clock)
    caplog.set_level(logging.INFO, logger="service.platform.errors")
    # Numbers are left out of a kind: these ten are one kind.
    admitted = [
        limiter.admit(400, "POST", "/classify", f"invalid request: images[{i}]: bad") for i in range(10)
    ]
    other = limiter.admit(400, "POST", "/forecast", "invalid request: history[0]: bad")
    assert admitted == [True] * 3 + [False] * 7 and other
    assert summaries(caplog) == []  # the interval is not over yet
    clock.now += 10
    assert limiter.admit(400, "POST", "/classify", "invalid request: images[0]: bad")
    assert summaries(caplog) == [
        "7 more failed requests like POST /classify answered 400: invalid request: images[#]: bad "
        "were not logged in the last 10 s"
    ]


def test_ever_new_kinds_share_one_count_past_the_bound(caplog):
    clock = Clock()
    limiter = FailedRequestLog(burst=2, interval_s=10, clock=clock)
    caplog.set_level(logging.INFO, logger="service.platform.errors")
    admitted = [
        limiter.admit(404, "GET", f"/nope-{chr(65 + i % 26)}{i // 26}x", "Not Found") for i in range(1000)
    ]
    # One line for each of the first MAX_KINDS paths, then 2 for all the others together.
    assert sum(admitted) == MAX_KINDS + 2
    clock.now += 10
    limiter.flush()
    assert summaries(caplog) == [
        f"{1000 - MAX_KINDS - 2} more failed requests of other kinds were not logged in the last 10 s"
    ]


def test_a_burst_of_0_logs_every_line():
    limiter = FailedRequestLog(burst=0, interval_s=10)
    assert all(limiter.admit(400, "POST", "/classify", "x") for _ in range(1000))


def count_lines(log: str, pattern: str) -> int:
    return len(re.findall(pattern, log))


def wait_for(server, pattern: str) -> str:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline and not re.search(pattern, server.log_text()):
        time.sleep(0.1)
    return server.log_text()


@pytest.mark.parametrize("path", ["/classify", "/classify?via=asgi"])
def test_a_flood_of_bad_requests_writes_a_bounded_log(tmp_path, path):
    with (
        serve(
            tmp_path, workers="1", log_failed_burst=str(BURST), log_failed_interval_s=str(INTERVAL_S)
        ) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        for i in range(FLOOD):
            answer = http.post(path, json={"images": []}, headers={"X-Request-ID": f"flood-{i}"})
            assert answer.status_code == 400
        # The summary comes at the interval's end, from the worker's timer: no request needed.
        log = wait_for(server, r"more failed requests like POST /classify answered 400")
        metrics = http.get("/metrics").text
        lines = count_lines(log, r"POST /classify answered 400: .*\(request_id=flood-\d+\)")
        summary = re.findall(r"(\d+) more failed requests like POST /classify answered 400", log)
        time.sleep(INTERVAL_S)  # a new interval
        late = http.post(path, json={"images": []}, headers={"X-Request-ID": "late"})
        log = wait_for(server, r"request_id=late\)")
    print(f"{FLOOD} bad requests to {path}: {lines} lines, summaries {summary}")
    version = latest_version(COMMITTED_STORE, "classifier")
    errors = re.search(
        rf'modelserve_errors_total\{{model="classifier",status="400",version="{version}"\}} (\S+)', metrics
    )
    assert errors is not None and float(errors.group(1)) == FLOOD, metrics[-2000:]
    assert late.status_code == 400 and "(request_id=late)" in log
    # Several intervals may pass during the flood: each writes at most BURST lines and a summary.
    assert lines >= BURST and lines + sum(map(int, summary)) == FLOOD
    assert lines <= BURST * (len(summary) + 1)
