"""The ONNX Runtime wrapper: provider choice and options, verification at load, IO binding,
CPU-fallback detection, CPU/GPU agreement."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from service.inference.runtime import (
    CPU,
    CUDA,
    TENSORRT,
    LoadedModel,
    ModelLoadError,
    ProviderUnavailable,
    SessionConfig,
    choose_providers,
    cuda_device_count,
    fallback_problem,
    provider_options,
    tensorrt_profile,
)
from service.platform.settings import GPU_MAX_BATCH_SIZE, Settings, SettingsError, get_settings
from store_format import latest_version
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
    with pytest.raises(
        ProviderUnavailable, match=r"MODELSERVE_PROVIDER=cuda, but .*MODELSERVE_PROVIDER=auto"
    ):
        choose_providers("cuda")


def test_a_tampered_model_is_refused_at_load(store_copy):
    path = store_copy / "classifier" / str(latest_version(store_copy, "classifier")) / "model.onnx"
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


# --- provider options from the settings --------------------------------------------------------


def test_cuda_and_tensorrt_options_come_from_the_settings(monkeypatch):
    monkeypatch.setenv("MODELSERVE_CUDA__DEVICE_ID", "1")
    monkeypatch.setenv("MODELSERVE_CUDA__GPU_MEM_LIMIT_MB", "4096")
    monkeypatch.setenv("MODELSERVE_CUDA__CUDNN_CONV_ALGO_SEARCH", "EXHAUSTIVE")
    monkeypatch.setenv("MODELSERVE_CUDA__DO_COPY_IN_DEFAULT_STREAM", "false")
    monkeypatch.setenv("MODELSERVE_TRT__ENGINE_CACHE_PATH", "/var/cache/trt")
    monkeypatch.setenv("MODELSERVE_TRT__FP16", "true")
    options = provider_options(Settings())
    assert options[CUDA] == {
        "device_id": "1",
        "gpu_mem_limit": str(4096 * 1024 * 1024),
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "0",
        "arena_extend_strategy": "kNextPowerOfTwo",
    }
    assert options[TENSORRT] == {
        "device_id": "1",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": "/var/cache/trt",
        "trt_fp16_enable": "True",
    }


def test_cuda_defaults_set_no_memory_cap_and_heuristic_algorithm_search():
    options = provider_options(Settings())[CUDA]
    assert "gpu_mem_limit" not in options
    assert options["device_id"] == "0"
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["do_copy_in_default_stream"] == "1"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MODELSERVE_CUDA__CUDNN_CONV_ALGO_SEARCH", "FASTEST"), ("MODELSERVE_CUDA__DEVICE_ID", "-1")],
)
def test_a_bad_cuda_option_stops_the_server_with_its_name(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match=variable):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_a_cpu_config_passes_no_gpu_options_and_binds_only_on_a_gpu():
    config = SessionConfig.from_settings(Settings(provider="cpu"))
    assert config.providers == (CPU,)
    assert config.provider_arguments() == [CPU]
    assert config.io_binding is None
    assert SessionConfig.from_settings(Settings(provider="cpu", io_binding="on")).io_binding is True


def test_gpu_provider_arguments_carry_their_options():
    options = provider_options(Settings())
    config = SessionConfig((CUDA, CPU), 1, {CUDA: options[CUDA]})
    assert config.provider_arguments() == [(CUDA, options[CUDA]), CPU]
    assert config.device_id == 0


# --- batch defaults by device ------------------------------------------------------------------


def test_a_gpu_gets_larger_batches_unless_the_settings_say_otherwise(monkeypatch):
    assert Settings().batch_policy("classifier").max_batch_size == 64
    assert Settings().batch_policy("classifier", on_gpu=True).max_batch_size == GPU_MAX_BATCH_SIZE == 256
    monkeypatch.setenv("MODELSERVE_BATCH__MAX_BATCH_SIZE", "32")
    assert Settings().batch_policy("classifier", on_gpu=True).max_batch_size == 32
    monkeypatch.delenv("MODELSERVE_BATCH__MAX_BATCH_SIZE")
    monkeypatch.setenv("MODELSERVE_BATCH_OVERRIDES", '{"forecaster": {"max_batch_size": 16}}')
    assert Settings().batch_policy("forecaster", on_gpu=True).max_batch_size == 16
    assert Settings().batch_policy("classifier", on_gpu=True).max_batch_size == 256


# --- CPU fallback detection --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "actual", "problem"),
    [
        ([CPU], [CPU], False),
        ([CUDA, CPU], [CUDA, CPU], False),
        ([TENSORRT, CUDA, CPU], [CUDA, CPU], False),  # still on the GPU
        ([CUDA, CPU], [CPU], True),
        ([TENSORRT, CUDA, CPU], [CPU], True),
        ([CUDA, CPU], [], True),
    ],
)
def test_fallback_is_a_gpu_asked_for_and_the_cpu_got(requested, actual, problem):
    message = fallback_problem(requested, actual)
    assert (message is not None) == problem
    if problem:
        assert requested[0] in message and "cuDNN" in message


@pytest.mark.skipif(HAS_GPU, reason="needs a machine where ONNX Runtime cannot give CUDA")
@pytest.mark.filterwarnings("ignore:Specified provider .CUDAExecutionProvider. is not in available")
def test_a_session_that_fell_back_to_the_cpu_is_refused_unless_allowed():
    # This ONNX Runtime cannot give CUDA, so it really falls back to the CPU, as a GPU build
    # with a CUDA/cuDNN mismatch does.
    config = SessionConfig((CUDA, CPU), 1)
    with pytest.raises(ModelLoadError, match="MODELSERVE_ALLOW_CPU_FALLBACK=true"):
        LoadedModel.load(COMMITTED_STORE, "classifier", None, config)
    allowed = LoadedModel.load(
        COMMITTED_STORE, "classifier", None, SessionConfig((CUDA, CPU), 1, allow_cpu_fallback=True)
    )
    assert allowed.provider == CPU and not allowed.on_gpu
    assert allowed.fallback is not None and CUDA in allowed.fallback


# --- IO binding --------------------------------------------------------------------------------


def _feeds(name: str, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    if name == "classifier":
        return {"images": rng.uniform(0, 16, (n, 1, 8, 8)).astype(np.float32)}
    if name == "forecaster":
        lengths = rng.integers(24, 200, size=n)
        history = np.zeros((n, int(lengths.max())), dtype=np.float32)
        for i, length in enumerate(lengths):
            history[i, :length] = 350 + rng.standard_normal(length)
        return {"history": history, "lengths": lengths.astype(np.int64)}
    return {
        "latent": rng.standard_normal((n, 32)).astype(np.float32),
        "labels": (np.arange(n) % 10).astype(np.int64),
    }


@pytest.mark.parametrize("name", ["classifier", "forecaster", "generator"])
def test_io_binding_on_the_cpu_gives_exactly_what_session_run_gives(name):
    bound = LoadedModel.load(COMMITTED_STORE, name, None, SessionConfig((CPU,), 1, io_binding=True))
    plain = LoadedModel.load(COMMITTED_STORE, name, None, CPU_ONLY)
    assert bound.io_binding and not plain.io_binding
    for n in (1, 7, 64):
        feeds = _feeds(name, n)
        got, expected = bound.run(feeds), plain.run(feeds)
        assert got.keys() == expected.keys() == set(bound.output_names)
        for key in expected:
            assert got[key].dtype == expected[key].dtype and got[key].shape[0] == n
            np.testing.assert_array_equal(got[key], expected[key])


def test_io_binding_takes_non_contiguous_inputs():
    model = LoadedModel.load(COMMITTED_STORE, "classifier", None, SessionConfig((CPU,), 1, io_binding=True))
    images = _feeds("classifier", 16)["images"]
    every_other = images[::2]  # a view with strides, as a slice of a larger batch would be
    assert not every_other.flags.c_contiguous
    np.testing.assert_array_equal(
        model.run({"images": every_other})["probabilities"],
        model.run({"images": np.ascontiguousarray(every_other)})["probabilities"],
    )


@needs_gpu
@pytest.mark.gpu
def test_io_binding_on_the_gpu_agrees_with_the_cpu():
    images = _feeds("classifier", 256)["images"]
    config = SessionConfig.from_settings(Settings(provider="cuda"))
    gpu = LoadedModel.load(COMMITTED_STORE, "classifier", None, config)
    assert gpu.on_gpu and gpu.io_binding
    cpu = LoadedModel.load(COMMITTED_STORE, "classifier", None, CPU_ONLY)
    np.testing.assert_allclose(
        gpu.run({"images": images})["probabilities"], cpu.run({"images": images})["probabilities"], atol=1e-4
    )


# --- TensorRT ----------------------------------------------------------------------------------

HAS_TENSORRT = HAS_GPU and TENSORRT in ort.get_available_providers()


def test_tensorrt_is_asked_for_only_when_enabled_and_present():
    if not HAS_GPU:
        assert choose_providers("auto", tensorrt=True) == [CPU]
    elif HAS_TENSORRT:
        assert choose_providers("auto", tensorrt=True) == [TENSORRT, CUDA, CPU]
    assert TENSORRT not in choose_providers("auto", tensorrt=False)


def test_the_tensorrt_profile_covers_batches_up_to_the_largest_and_dynamic_lengths():
    forecaster = LoadedModel.load(COMMITTED_STORE, "forecaster", None, CPU_ONLY).manifest
    profile = tensorrt_profile(forecaster.inputs, 256, 4096)
    assert profile == {
        "trt_profile_min_shapes": "history:1x1,lengths:1",
        "trt_profile_max_shapes": "history:256x4096,lengths:256",
        "trt_profile_opt_shapes": "history:256x4096,lengths:256",
    }
    classifier = LoadedModel.load(COMMITTED_STORE, "classifier", None, CPU_ONLY).manifest
    assert tensorrt_profile(classifier.inputs, 64, 1)["trt_profile_max_shapes"] == "images:64x1x8x8"


@pytest.mark.skipif(not HAS_TENSORRT, reason="needs a CUDA GPU and ONNX Runtime's TensorRT provider")
@pytest.mark.gpu
def test_tensorrt_caches_its_engine_in_the_configured_folder(tmp_path):
    settings = Settings(provider="cuda", tensorrt=True, trt={"engine_cache_path": tmp_path / "engines"})
    model = LoadedModel.load(COMMITTED_STORE, "classifier", None, SessionConfig.from_settings(settings), 64)
    assert model.provider == TENSORRT
    model.run(_feeds("classifier", 64))
    assert any((tmp_path / "engines").iterdir())
