"""ONNX Runtime sessions: the only module that talks to ONNX Runtime.

A :class:`LoadedModel` is one verified model version in one inference session, with the
execution provider chosen once at start-up (CUDA when a GPU and the GPU build of ONNX
Runtime are both present, CPU otherwise, or whatever the settings force; TensorRT before
CUDA when enabled). The provider a session really got is checked against the one asked
for: ONNX Runtime falls back to the CPU silently when CUDA or cuDNN cannot be loaded.

On a GPU, a batch runs through IO binding: its inputs are copied to the device once and
its outputs come back once. The same code path runs on the CPU provider (docs/gpu.md).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from store_format import (
    NUMPY_DTYPE_NAMES,
    ORT_DATATYPES,
    TENSOR_TASK,
    Manifest,
    TensorSpec,
    load_verified,
)

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
# IO binding names devices this way (OrtDevice), not by provider.
_DEVICE_TYPES = {CPU: "cpu", CUDA: "cuda", TENSORRT: "cuda"}

# Every V2 datatype ONNX Runtime takes as a tensor, by its NumPy dtype (BYTES: object arrays of
# str, as ONNX Runtime takes and gives strings), and ONNX Runtime's type names for them: the
# store format's own maps, so that the service and the import agree on every datatype.
NUMPY_DTYPES = {datatype: np.dtype(name) for datatype, name in NUMPY_DTYPE_NAMES.items()}
_ORT_TYPES = ORT_DATATYPES

# ONNX Runtime logs warnings (e.g. about nodes placed on the CPU) at session creation that
# read like failures but are not; errors still come through.
ort.set_default_logger_severity(3)


class ModelLoadError(RuntimeError):
    """A model could not be loaded: missing, tampered with, or not what its manifest says."""


class GraphMismatch(ModelLoadError):
    """The graph's inputs or outputs are not those its manifest declares."""


class ProviderUnavailable(ModelLoadError):
    """The configured execution provider can never work on this machine: the server must stop."""


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees, without importing a framework (0 when there is no driver)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def has_gpu_build() -> bool:
    """Whether this ONNX Runtime is the GPU build (it lists the CUDA provider)."""
    return CUDA in ort.get_available_providers()


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN the way the GPU build documents (NVIDIA's pip packages first).

    Only with the GPU build: the CPU build has nothing to preload. A library that cannot be
    found is not an error here; the session then falls back to the CPU, which is detected
    (see :func:`fallback_problem`).
    """
    if not has_gpu_build() or not hasattr(ort, "preload_dlls"):
        return
    try:
        ort.preload_dlls()
    except OSError as exc:
        log.warning("onnxruntime.preload_dlls() could not load a CUDA/cuDNN library: %s", exc)


def choose_providers(requested: str, tensorrt: bool = False) -> list[str]:
    """Execution providers for ``requested`` ("auto", "cpu" or "cuda"), best first.

    "auto" asks for CUDA only when both the GPU build of ONNX Runtime and a GPU are
    present: asking for it without a GPU makes ONNX Runtime log provider errors. With
    ``tensorrt``, TensorRT goes before CUDA when this build has it. Raises
    :class:`ProviderUnavailable` when "cuda" is forced on a machine where it cannot work.
    """
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if not has_gpu_build():
            raise ProviderUnavailable(
                "MODELSERVE_PROVIDER=cuda, but this ONNX Runtime has no CUDA provider: "
                "install the `gpu` extra (onnxruntime-gpu) instead of `cpu`, or set MODELSERVE_PROVIDER=auto"
            )
        if cuda_device_count() == 0:
            raise ProviderUnavailable(
                "MODELSERVE_PROVIDER=cuda, but no CUDA GPU is visible (no driver, or CUDA_VISIBLE_DEVICES "
                "hides them): run on a GPU machine, or set MODELSERVE_PROVIDER=auto or cpu"
            )
    elif not (has_gpu_build() and cuda_device_count() > 0):
        return [CPU]
    if tensorrt and TENSORRT in ort.get_available_providers():
        return [TENSORRT, CUDA, CPU]
    return [CUDA, CPU]


def cuda_provider_options(
    device_id: int = 0,
    gpu_mem_limit_mb: int = 0,
    cudnn_conv_algo_search: str = "HEURISTIC",
    do_copy_in_default_stream: bool = True,
) -> dict[str, str]:
    """ONNX Runtime's CUDA provider options, as the strings it documents.

    A memory limit of 0 leaves ONNX Runtime's own (none); the arena then grows by powers of
    two (``kNextPowerOfTwo``), its default.
    """
    options = {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": cudnn_conv_algo_search,
        "do_copy_in_default_stream": "1" if do_copy_in_default_stream else "0",
        "arena_extend_strategy": "kNextPowerOfTwo",
    }
    if gpu_mem_limit_mb:
        options["gpu_mem_limit"] = str(gpu_mem_limit_mb * 1024 * 1024)
    return options


def tensorrt_provider_options(device_id: int, engine_cache_path: Path, fp16: bool) -> dict[str, str]:
    """ONNX Runtime's TensorRT provider options: engines cached in ``engine_cache_path``."""
    return {
        "device_id": str(device_id),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(engine_cache_path),
        "trt_fp16_enable": "True" if fp16 else "False",
    }


def tensorrt_profile(inputs: Sequence[TensorSpec], max_batch_size: int, max_length: int) -> dict[str, str]:
    """TensorRT optimisation profile covering every shape the service sends.

    Without one, TensorRT builds an engine for the first shapes it sees and builds again each
    time a batch is larger (on live requests). The batch axis goes 1..``max_batch_size``; any
    other dynamic axis (the forecaster's history length) 1..``max_length``. The largest shape
    is the one optimised for: that is where a busy server's batches are.
    """

    def dims(spec: TensorSpec, batch: int, other: int) -> str:
        return "x".join(str(batch if i == 0 else other if d == -1 else d) for i, d in enumerate(spec.shape))

    def shapes(batch: int, other: int) -> str:
        return ",".join(f"{spec.name}:{dims(spec, batch, other)}" for spec in inputs)

    largest = shapes(max_batch_size, max_length)
    return {
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_max_shapes": largest,
        "trt_profile_opt_shapes": largest,
    }


def fallback_problem(requested: Sequence[str], actual: Sequence[str]) -> str | None:
    """What went wrong when a session did not get the provider asked for; None when it did.

    ONNX Runtime drops a provider it cannot load (CUDA or cuDNN missing or of the wrong
    version) and carries on with the next one, down to the CPU, logging only a warning.
    Only a GPU asked for and the CPU got is a problem; TensorRT falling back to CUDA still
    runs on the GPU (it is logged by the caller).
    """
    if not requested or requested[0] not in GPU_PROVIDERS:
        return None
    got = actual[0] if actual else "no provider"
    if got in GPU_PROVIDERS:
        return None
    return (
        f"{requested[0]} was asked for, but ONNX Runtime gave the session {got}: CUDA or cuDNN could "
        "not be loaded (missing, or not the versions this onnxruntime-gpu was built for)"
    )


def provider_options(settings: Any) -> dict[str, dict[str, str]]:
    """The options of each GPU provider that ``settings`` (MODELSERVE_CUDA__*, MODELSERVE_TRT__*) give."""
    cuda, trt = settings.cuda, settings.trt
    return {
        CUDA: cuda_provider_options(
            cuda.device_id, cuda.gpu_mem_limit_mb, cuda.cudnn_conv_algo_search, cuda.do_copy_in_default_stream
        ),
        TENSORRT: tensorrt_provider_options(cuda.device_id, trt.engine_cache_path, trt.fp16),
    }


@dataclass(frozen=True)
class SessionConfig:
    """How every session of a server is made: providers, their options, threads, binding."""

    providers: tuple[str, ...]
    intra_op_threads: int
    # Options per provider name (providers without an entry get ONNX Runtime's defaults).
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    # Bind inputs/outputs per batch (one copy each way); None = only on a GPU provider.
    io_binding: bool | None = None
    # A GPU asked for and the CPU got is served anyway (logged) instead of refused.
    allow_cpu_fallback: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> SessionConfig:
        """The config that ``settings`` (a :class:`service.platform.settings.Settings`) describe.

        Raises :class:`ProviderUnavailable` when the provider asked for cannot work here.
        """
        providers = tuple(choose_providers(settings.provider, settings.tensorrt))
        options = provider_options(settings)
        return cls(
            providers,
            settings.threads_per_session,
            {name: options[name] for name in providers if name in options},
            {"auto": None, "on": True, "off": False}[settings.io_binding],
            settings.allow_cpu_fallback,
        )

    def provider_arguments(self) -> list[str | tuple[str, dict[str, str]]]:
        """The ``providers`` argument of ``ort.InferenceSession``: names, with options where set."""
        return [
            (name, self.provider_options[name]) if name in self.provider_options else name
            for name in self.providers
        ]

    @property
    def device_id(self) -> int:
        return int(self.provider_options.get(CUDA, {}).get("device_id", 0))


class LoadedModel:
    """One model version: its manifest and its ONNX Runtime session."""

    def __init__(
        self, manifest: Manifest, path: Path, config: SessionConfig, max_batch_size: int = 256
    ) -> None:
        """``max_batch_size`` only sizes a TensorRT engine (its optimisation profile)."""
        self.manifest = manifest
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning pool threads burn a core that the HTTP event loop needs (docs/evidence/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = config.provider_arguments()
        if TENSORRT in config.providers:
            providers = self._with_tensorrt_profile(config, max_batch_size)
        started = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise ModelLoadError(f"{self.label}: ONNX Runtime cannot load {path}: {exc}") from exc
        # With TensorRT this includes building (or loading from the cache) its engine.
        self.session_created_s = time.perf_counter() - started
        self.providers = tuple(self.session.get_providers())
        self.provider = self.providers[0]
        self.fallback = fallback_problem(config.providers, self.providers)
        if self.fallback and not config.allow_cpu_fallback:
            raise ModelLoadError(
                f"{self.label}: {self.fallback}; MODELSERVE_ALLOW_CPU_FALLBACK=true serves it on the CPU"
            )
        if self.fallback:
            log.warning("%s: %s; served on the CPU (CPU fallback allowed)", self.label, self.fallback)
        if config.providers[0] == TENSORRT and self.provider != TENSORRT:
            log.warning("%s: TensorRT was asked for, but the session runs on %s", self.label, self.provider)
        elif self.provider == TENSORRT:
            log.info(
                "%s: TensorRT session made in %.1f s (engine cache %s; a first build finishes in warm-up)",
                self.label,
                self.session_created_s,
                config.provider_options[TENSORRT]["trt_engine_cache_path"],
            )
        self._check_graph_matches_manifest()
        self.output_names = [spec.name for spec in manifest.outputs]
        on_gpu = self.provider in GPU_PROVIDERS
        self.io_binding = on_gpu if config.io_binding is None else config.io_binding
        self._device = (_DEVICE_TYPES.get(self.provider, "cpu"), config.device_id if on_gpu else 0)

    def _with_tensorrt_profile(
        self, config: SessionConfig, max_batch_size: int
    ) -> list[str | tuple[str, dict[str, str]]]:
        """The session's providers, TensorRT's options completed with this model's profile."""
        cache = Path(config.provider_options[TENSORRT]["trt_engine_cache_path"])
        cache.mkdir(parents=True, exist_ok=True)
        max_length = int(self.manifest.serving.get("max_length", 4096))
        profile = tensorrt_profile(self.manifest.inputs, max_batch_size, max_length)
        return [
            (name, {**config.provider_options.get(name, {}), **(profile if name == TENSORRT else {})})
            for name in config.providers
        ]

    @classmethod
    def load(
        cls, store: Path, name: str, version: int | None, config: SessionConfig, max_batch_size: int = 256
    ) -> LoadedModel:
        """Verify ``name`` (sha256 against its manifest), then load it."""
        try:
            manifest, path = load_verified(store, name, version)
        except ValueError as exc:  # ManifestError, IntegrityError
            raise ModelLoadError(f"{name}: {exc}") from exc
        return cls(manifest, path, config, max_batch_size)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def label(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"

    @property
    def on_gpu(self) -> bool:
        """Whether the session really runs on a GPU provider."""
        return self.provider in GPU_PROVIDERS

    def release(self) -> None:
        """Drop the ONNX Runtime session now, once this version is no longer served.

        Its memory is freed at once by reference counting, even where this object itself
        lives on in a reference cycle that the garbage collector never visits (the service
        freezes what it loaded at start-up out of every collection).
        """
        self.session = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ONNX Runtime call; with IO binding when the config (or a GPU) says so."""
        if self.io_binding:
            return self.run_bound(feeds)
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs, strict=True))

    def run_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call through IO binding: each input goes to the device once, each output back once.

        A binding per call, because batches of one model may run on several threads at once.
        Outputs are allocated by ONNX Runtime on the session's device (their shape depends on
        the batch) and copied to host memory in one step after the run.
        """
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        device_type, device_id = self._device
        for name in self.output_names:
            binding.bind_output(name, device_type, device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        return dict(zip(self.output_names, outputs, strict=True))

    def _check_graph_matches_manifest(self) -> None:
        """Each input and output the manifest names is the graph's, with its datatype and shape.

        Compared by name: feeds and requested outputs are named, so the graph's order does not
        matter (an import lists them in the order ``--inputs``/``--outputs`` give). Every input
        must be declared (each one is fed). The graph's outputs must be the manifest's plus, for
        an imported model, its ``serving.hidden_outputs``: left out at import, never requested
        (:meth:`run` asks for the manifest's outputs only), so they may be anything, a sequence
        of maps included.
        """
        hidden: tuple[str, ...] = ()
        if self.manifest.task == TENSOR_TASK:
            hidden = tuple(self.manifest.serving.get("hidden_outputs", ()))
        for kind, declared, actual, allowed in (
            ("input", self.manifest.inputs, self.session.get_inputs(), ()),
            ("output", self.manifest.outputs, self.session.get_outputs(), hidden),
        ):
            found = {
                a.name: TensorSpec(
                    a.name,
                    _ORT_TYPES.get(a.type, a.type),
                    tuple(d if isinstance(d, int) else -1 for d in a.shape),
                )
                for a in actual
                if a.name not in allowed
            }
            expected = {spec.name: spec for spec in declared}
            missing = [name for name in allowed if name not in {a.name for a in actual}]
            if found != expected or missing:
                hidden_note = f" (besides the hidden {list(allowed)})" if allowed else ""
                raise GraphMismatch(
                    f"{self.label}: the graph's {kind}s {list(found.values())}{hidden_note} differ from "
                    f"the manifest's {list(declared)}"
                    + (f"; the graph has no {kind}s {missing}" if missing else "")
                )
