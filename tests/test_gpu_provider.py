"""The execution provider at the server's edge: a provider that can never work stops
``bentoml serve`` at once, and the provider each model really got is reported."""

from __future__ import annotations

import subprocess

import onnxruntime as ort
import pytest

from harness.server import ServerProcess, bentoml_command, free_port, service_env
from service.inference.runtime import CPU, CUDA, cuda_device_count
from store_format import latest_version
from tests.conftest import COMMITTED_STORE

HAS_GPU = CUDA in ort.get_available_providers() and cuda_device_count() > 0
# The parent process exits before any worker starts: seconds, not the start timeout.
EXIT_WITHIN_S = 30


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_cuda_forced_without_a_gpu_stops_bentoml_serve_with_one_message(tmp_path):
    port = free_port()
    env = service_env(COMMITTED_STORE, {"MODELSERVE_PROVIDER": "cuda", "MODELSERVE_WORKERS": "1"})
    server = ServerProcess(bentoml_command(port), env, port, name="cuda-without-gpu", workdir=tmp_path)
    try:
        try:
            status = server.process.wait(timeout=EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"bentoml serve still running after {EXIT_WITHIN_S} s:\n{server.log_tail()}")
    finally:
        server.stop()
    log = server.log_text()
    assert status == 1, log
    [line] = [line for line in log.splitlines() if "cannot start" in line]
    assert line.startswith("modelserve cannot start: MODELSERVE_PROVIDER=cuda, but "), log
    assert "Traceback" not in log  # one message, not a stack
    assert "Starting production" not in log  # no worker was ever started


def test_the_provider_each_model_got_is_in_v2_metadata_and_metrics(server):
    expected = CUDA if HAS_GPU else CPU
    with server.client() as client:
        for name in ("classifier", "forecaster", "generator"):
            metadata = client.get(f"/v2/models/{name}").json()
            assert metadata["parameters"]["execution_provider"] == expected
        metrics = client.get("/metrics").text
    for name in ("classifier", "forecaster", "generator"):
        version = latest_version(COMMITTED_STORE, name)
        assert (
            f'modelserve_model_provider_info{{model="{name}",provider="{expected}",version="{version}"}} 1.0'
            in metrics
        )
