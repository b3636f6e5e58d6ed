"""What the CPU and GPU installs pull: a CPU install never gets onnxruntime-gpu or NVIDIA's
CUDA/cuDNN packages; the GPU extras get onnxruntime-gpu, and `gpu-cuda` CUDA and cuDNN too."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement

from harness.server import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]


def requirements(*extras: str) -> list[Requirement]:
    return [Requirement(r) for r in PROJECT["dependencies"] + [r for e in extras for r in EXTRAS[e]]]


def test_a_cpu_install_pulls_no_gpu_runtime():
    names = {r.name for r in requirements("cpu")}
    assert "onnxruntime" in names
    assert not [n for n in names if n == "onnxruntime-gpu" or n.startswith("nvidia")]
    assert not [r for r in requirements("cpu") if r.extras]


def test_the_gpu_extras_pin_the_same_onnxruntime_gpu_as_the_cpu_build():
    [cpu] = [r for r in requirements("cpu") if r.name == "onnxruntime"]
    for extra in ("gpu", "gpu-cuda"):
        [gpu] = [r for r in requirements(extra) if r.name == "onnxruntime-gpu"]
        assert str(gpu.specifier) == str(cpu.specifier) and str(gpu.specifier).startswith("==")
        assert not [r for r in requirements(extra) if r.name == "onnxruntime"]


def test_gpu_cuda_brings_cuda_and_cudnn_from_nvidias_packages():
    [gpu] = [r for r in requirements("gpu-cuda") if r.name == "onnxruntime-gpu"]
    assert gpu.extras == {"cuda", "cudnn"}
