"""ONNX Runtime sessions: the only module that talks to ONNX Runtime.

A :class:`LoadedModel` is one verified model version in one inference session, with the
execution provider chosen once at start-up (CUDA when a GPU and the GPU build of ONNX
Runtime are both present, CPU otherwise, or whatever the settings force).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from store_format import Manifest, TensorSpec, load_verified

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

NUMPY_DTYPES = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}
_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}

# ONNX Runtime logs warnings (e.g. about nodes placed on the CPU) at session creation that
# read like failures but are not; errors still come through.
ort.set_default_logger_severity(3)


class ModelLoadError(RuntimeError):
    """A model could not be loaded: missing, tampered with, or not what its manifest says."""


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


def choose_providers(requested: str) -> list[str]:
    """Execution providers for ``requested`` ("auto", "cpu" or "cuda"), best first.

    "auto" asks for CUDA only when both the GPU build of ONNX Runtime and a GPU are
    present: asking for it without a GPU makes ONNX Runtime log provider errors.
    """
    has_cuda_build = CUDA in ort.get_available_providers()
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if not has_cuda_build:
            raise ModelLoadError(
                "MODELSERVE_PROVIDER=cuda, but this ONNX Runtime has no CUDA provider: "
                "install the `gpu` extra (onnxruntime-gpu) instead of `cpu`"
            )
        if cuda_device_count() == 0:
            raise ModelLoadError("MODELSERVE_PROVIDER=cuda, but no CUDA GPU is visible")
        return [CUDA, CPU]
    if has_cuda_build and cuda_device_count() > 0:
        return [CUDA, CPU]
    return [CPU]


@dataclass(frozen=True)
class SessionConfig:
    providers: tuple[str, ...]
    intra_op_threads: int


class LoadedModel:
    """One model version: its manifest and its ONNX Runtime session."""

    def __init__(self, manifest: Manifest, path: Path, config: SessionConfig) -> None:
        self.manifest = manifest
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning pool threads burn a core that the HTTP event loop needs (docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(config.providers))
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise ModelLoadError(f"{self.label}: ONNX Runtime cannot load {path}: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        if config.providers[0] == CUDA and self.provider != CUDA:
            raise ModelLoadError(f"{self.label}: CUDA was asked for, but the session runs on {self.provider}")
        self._check_graph_matches_manifest()
        self.output_names = [spec.name for spec in manifest.outputs]

    @classmethod
    def load(cls, store: Path, name: str, version: int | None, config: SessionConfig) -> LoadedModel:
        """Verify ``name`` (sha256 against its manifest), then load it."""
        try:
            manifest, path = load_verified(store, name, version)
        except ValueError as exc:  # ManifestError, IntegrityError
            raise ModelLoadError(f"{name}: {exc}") from exc
        return cls(manifest, path, config)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def label(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs, strict=True))

    def _check_graph_matches_manifest(self) -> None:
        for kind, declared, actual in (
            ("input", self.manifest.inputs, self.session.get_inputs()),
            ("output", self.manifest.outputs, self.session.get_outputs()),
        ):
            found = [
                TensorSpec(
                    a.name,
                    _ORT_TYPES.get(a.type, a.type),
                    tuple(d if isinstance(d, int) else -1 for d in a.shape),
                )
                for a in actual
            ]
            if list(declared) != found:
                raise ModelLoadError(
                    f"{self.label}: the graph's {kind}s {found} differ from the manifest's {list(declared)}"
                )
