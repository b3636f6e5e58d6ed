"""The ONNX Runtime wrapper: provider choice, verification at load, CPU/GPU agreement."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from service.runtime import (
    CPU,
    CUDA,
    LoadedModel,
    ModelLoadError,
    SessionConfig,
    choose_providers,
    cuda_device_count,
)
from tests.conftest import COMMITTED_STORE

HAS_GPU = CUDA in ort.get_available_providers() and cuda_device_count() > 0
needs_gpu = pytest.mark.skipif(
    not HAS_GPU, reason="needs a CUDA GPU and the onnxruntime-gpu build (pip install -e '.[gpu]')"
)
CPU_ONLY = SessionConfig((CPU,), intra_op_threads=1)


def test_auto_asks_for_cuda_only_when_a_gpu_is_really_there():
    providers = choose_providers("auto")
    assert providers == ([CUDA, CPU] if HAS_GPU else [CPU])
    assert choose_providers("cpu") == [CPU]


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_forcing_cuda_without_a_gpu_refuses_with_the_fix():
    with pytest.raises(ModelLoadError, match="cuda"):
        choose_providers("cuda")


def test_a_tampered_model_is_refused_at_load(store_copy):
    path = store_copy / "classifier" / "1" / "model.onnx"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        LoadedModel.load(store_copy, "classifier", None, CPU_ONLY)


def test_a_missing_version_is_refused_with_the_versions_there_are():
    with pytest.raises(ModelLoadError, match=r"no version 99 .* \[1"):
        LoadedModel.load(COMMITTED_STORE, "classifier", 99, CPU_ONLY)


@pytest.mark.parametrize("name", ["classifier", "forecaster", "generator"])
def test_committed_models_load_and_run_on_the_cpu(name):
    model = LoadedModel.load(COMMITTED_STORE, name, None, CPU_ONLY)
    assert model.provider == CPU and model.version >= 1


@needs_gpu
@pytest.mark.gpu
def test_gpu_and_cpu_sessions_agree():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 16, (64, 1, 8, 8)).astype(np.float32)
    cpu = LoadedModel.load(COMMITTED_STORE, "classifier", None, CPU_ONLY)
    gpu = LoadedModel.load(COMMITTED_STORE, "classifier", None, SessionConfig((CUDA, CPU), 1))
    assert gpu.provider == CUDA
    np.testing.assert_allclose(
        gpu.run({"images": images})["probabilities"], cpu.run({"images": images})["probabilities"], atol=1e-4
    )
