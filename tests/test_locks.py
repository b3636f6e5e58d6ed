"""The running environment is the locked one (docs/dependencies.md).

`make test` installs requirements/test-<cpu|gpu>.lock with hashes, then torch by its version
pin, then the project without dependencies. These tests read what is installed
(importlib.metadata) and compare it with that lock: every package the lock names has exactly
the lock's version, and nothing else is installed. They also check that the lock files agree
with each other and that the packages whose internals the service reaches into are pinned
exactly in pyproject.toml. `make lock-check` (online) checks the locks are current.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The service subclasses or patches these libraries' internals (pyproject.toml says where).
HOOKED = ("uvicorn", "starlette", "kantoku")
# In the environment but never in a lock: the venv's installer, and the project itself.
UNLOCKED = {"pip", "modelserve"}


def read_lock(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a lock written by `make lock` (one pin a line, hashes
    on continuation lines; no environment markers, as each lock is for one platform)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line):
            pins[canonicalize_name(match[1])] = match[2]
        else:
            assert not line or line.startswith(("#", " ")), f"{path.name}: cannot read {line!r}"
    return pins


def installed() -> dict[str, str]:
    return {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()
    }


def requirements(*extras: str) -> list[Requirement]:
    optional = PROJECT["optional-dependencies"]
    return [Requirement(r) for r in PROJECT["dependencies"] + [r for e in extras for r in optional[e]]]


def pyproject_pin(name: str) -> str:
    [requirement] = [r for r in requirements("train") if canonicalize_name(r.name) == name]
    [spec] = requirement.specifier
    assert spec.operator == "==", f"pyproject.toml pins {requirement}, not one version"
    return spec.version


def running_lock() -> Path:
    """The test lock this environment was installed from: the GPU set if onnxruntime-gpu is in."""
    ort = "gpu" if "onnxruntime-gpu" in installed() else "cpu"
    return ROOT / "requirements" / f"test-{ort}.lock"


def test_installed_versions_are_the_locks():
    lock, running = read_lock(running_lock()), installed()
    assert len(lock) > 100
    missing = sorted(name for name in lock if name not in running)
    differ = {
        name: f"{running[name]} (lock: {pin})"
        for name, pin in lock.items()
        if name in running and Version(running[name]) != Version(pin)
    }
    assert not (missing or differ), (
        f"the environment is not {running_lock().name} (`make test` reinstalls from it): "
        f"not installed {missing}, other versions {differ}"
    )


def test_nothing_is_installed_outside_the_lock():
    lock = read_lock(running_lock())
    extra = sorted(set(installed()) - set(lock) - UNLOCKED - {"torch"})
    assert not extra, (
        f"installed but not in {running_lock().name}: {extra}. A torch build from PyPI brings "
        "CUDA packages: `make clean test TORCH_INDEX=https://download.pytorch.org/whl/cpu`"
    )


def test_torch_is_the_pinned_release_and_left_out_of_the_lock():
    # torch alone is installed by version, not hash (docs/dependencies.md): its CPU build's
    # local label (+cpu) is the only difference allowed.
    assert "torch" not in read_lock(running_lock())
    torch = installed().get("torch")
    assert torch is not None, "torch is not installed: `make test` installs it"
    assert Version(torch).public == pyproject_pin("torch")


def test_hooked_libraries_are_pinned_exactly_in_pyproject():
    core = {canonicalize_name(r.name): r for r in requirements()}
    image = read_lock(ROOT / "container" / "requirements-cpu.lock")
    for name in HOOKED:
        assert name in core, f"pyproject.toml's dependencies do not name {name}"
        [spec] = core[name].specifier
        assert spec.operator == "==", f"{core[name]}: the service patches {name}; pin one version"
        assert image[name] == spec.version


@pytest.mark.parametrize("ort", ["cpu", "gpu"])
def test_test_lock_pins_satisfy_pyproject(ort: str):
    lock = read_lock(ROOT / "requirements" / f"test-{ort}.lock")
    for requirement in requirements(ort, "train", "dev", "bench", "load"):
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        assert name in lock, f"test-{ort}.lock lacks {requirement}: run `make lock`"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"test-{ort}.lock pins {name}=={lock[name]}, pyproject.toml asks {requirement}: run `make lock`"
        )


@pytest.mark.parametrize(
    "lock",
    [
        "requirements/serve-gpu.lock",
        "requirements/test-gpu.lock",
        "container/requirements-cpu.lock",
        "container/requirements-build.lock",
    ],
)
def test_every_lock_has_the_cpu_test_sets_versions(lock: str):
    """One version of each package: local serving, a GPU host and the CPU image run what CI tests."""
    test = read_lock(ROOT / "requirements" / "test-cpu.lock")
    pins = read_lock(ROOT / lock)
    ort_builds = {"onnxruntime", "onnxruntime-gpu"}
    assert not {name: pin for name, pin in pins.items() if name not in ort_builds and test.get(name) != pin}
