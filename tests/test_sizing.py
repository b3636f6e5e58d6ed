"""The server sizes itself to the CPUs it may really use, says so in its log and in /metrics."""

from __future__ import annotations

import os
import re

import pytest

from service.platform.settings import Settings, cpu_budget
from tests.conftest import serve


def test_defaults_follow_the_cpu_budget_and_settings_override_it():
    budget = cpu_budget()
    assert 1 <= budget.cpus <= (os.cpu_count() or 1)
    settings = Settings()
    assert settings.worker_count == budget.workers
    assert settings.threads_per_session == budget.threads_per_worker(budget.workers)
    pinned = Settings(workers=3, intra_op_threads=2)
    assert (pinned.worker_count, pinned.threads_per_session) == (3, 2)


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to show a smaller affinity")
def test_a_server_pinned_to_one_cpu_runs_one_worker(tmp_path):
    """A child inherits its parent's CPU affinity, as a container's processes inherit ``--cpuset-cpus``."""
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everything)})
    try:
        with serve(tmp_path) as server, server.client() as client:
            metrics = client.get("/metrics").text
            log = server.log_text()
    finally:
        os.sched_setaffinity(0, everything)
    [info] = [line for line in metrics.splitlines() if line.startswith("modelserve_runtime_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info))
    assert labels["workers"] == "1", info
    assert labels["intra_op_threads"] == "1", info
    assert labels["provider"] == "CPUExecutionProvider", info
    assert labels["cpus"] == "1" and labels["cpu_source"] in {
        "affinity",
        "cgroup v1 quota",
        "cgroup v2 quota",
    }
    assert info.endswith(" 1.0"), info
    assert re.search(r"worker \d+ of 1: 1 intra-op thread\(s\) per session on CPUExecutionProvider", log), log
