"""Offline checks of the container image's sources: lock files, Dockerfiles, bentofile.

The image itself is built and run by `make image` and `make image-test` (podman); these
checks need neither podman nor the network, so they fail fast in `make test` when an edit
breaks what the image build relies on. `make lock-check` re-resolves the locks online.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONTAINER = ROOT / "container"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def read_lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """``{package: (version, [sha256 hashes])}`` from a pip-style lock file with hashes."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (CONTAINER / name).read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==([^ \\]+)", line):
            current = canonicalize_name(match[1])
            pins[current] = (match[2], [])
        elif match := re.search(r"--hash=sha256:([0-9a-f]{64})", line):
            assert current is not None, f"{name}: a hash before any package"
            pins[current][1].append(match[1])
    return pins


def dockerfile_stages(name: str) -> dict[str, list[str]]:
    """The instructions of each named stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (CONTAINER / name).read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = stages.setdefault(match[1], [])
        current.append(line)
    return stages


def serving_requirements(extra: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]


@pytest.mark.parametrize(
    ("lock", "extra"), [("requirements-cpu.lock", "cpu"), ("requirements-gpu.lock", "gpu")]
)
def test_lock_pins_satisfy_pyproject(lock: str, extra: str) -> None:
    pins = read_lock(lock)
    for requirement in serving_requirements(extra):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} lacks {requirement}: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, pyproject.toml asks {requirement}: run `make lock`"
        )


@pytest.mark.parametrize(
    "lock",
    ["requirements-cpu.lock", "requirements-gpu.lock", "requirements-build.lock", "requirements-sbom.lock"],
)
def test_every_pin_has_hashes(lock: str) -> None:
    pins = read_lock(lock)
    assert pins
    assert not [name for name, (_, hashes) in pins.items() if not hashes]


def test_locks_hold_the_serving_stack_only() -> None:
    cpu, gpu = read_lock("requirements-cpu.lock"), read_lock("requirements-gpu.lock")
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    # onnx is served: `python -m store_format import` checks user models with it.
    for training_only in ("torch", "scikit-learn", "matplotlib", "pytest"):
        assert training_only not in cpu and training_only not in gpu


def test_build_lock_satisfies_the_build_backend() -> None:
    pins = read_lock("requirements-build.lock")
    for requirement in map(Requirement, PYPROJECT["build-system"]["requires"]):
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)][0])


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_runtime_stage_runs_as_numeric_non_root_on_port_3000(dockerfile: str) -> None:
    runtime = dockerfile_stages(dockerfile)["runtime"]
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: runAsNonRoot needs a numeric UID"
    assert "EXPOSE 3000" in runtime
    env = " ".join(line for line in runtime if line.startswith("ENV "))
    assert "BENTOML_HOST=0.0.0.0" in env and "BENTOML_PORT=3000" in env
    # A read-only root filesystem: BentoML's home must be on the writable /tmp.
    assert "BENTOML_HOME=/tmp/" in env
    assert runtime[-1].startswith("CMD") and "bentoml" in runtime[-1]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_ca_bundle_is_a_build_secret_only(dockerfile: str) -> None:
    text = (CONTAINER / dockerfile).read_text()
    # pip gets the host's CA bundle only from a secret mount, never from a copied file or ENV.
    assert "--mount=type=secret,id=host-ca" in text
    assert not re.search(r"^\s*(COPY|ADD)\s.*\.(crt|pem)\b", text, re.MULTILINE)
    assert not re.search(r"^\s*(ENV|ARG)\s.*(PIP_CERT|SSL_CERT_FILE|REQUESTS_CA_BUNDLE)", text, re.MULTILINE)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dependencies_install_from_the_lock_with_hashes(dockerfile: str) -> None:
    stages = dockerfile_stages(dockerfile)
    dependencies, project = " ".join(stages["dependencies"]), " ".join(stages["project"])
    lock = "requirements-cpu.lock" if dockerfile == "Dockerfile" else "requirements-gpu.lock"
    assert re.search(rf"pip install [^&]*--require-hashes --no-deps [^&]*-r /tmp/locks/{lock}", dependencies)
    assert re.search(r"pip install [^&]*--no-deps [^&]*modelserve-\*\.whl", project)
    runtime = " ".join(stages["runtime"])
    assert "COPY --from=dependencies /opt/venv /opt/venv" in runtime
    assert "COPY --from=project /opt/project/ /opt/venv/lib/python3." in runtime


def test_bento_holds_serving_code_models_and_locks_only() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    include = bentofile["include"]
    assert bentofile["service"] == "service:ModelService"
    for needed in ("/model_store/*/*/model.onnx", "/model_store/*/*/manifest.json", "/pyproject.toml"):
        assert needed in include
    for lock in ("requirements-cpu.lock", "requirements-build.lock", "requirements-sbom.lock"):
        assert f"/container/{lock}" in include
    assert not [pattern for pattern in include if re.search(r"training|tests|\.png", pattern)]
    assert bentofile["python"]["requirements_txt"] == "container/requirements-cpu.lock"


def test_private_podman_configuration_has_no_machine_paths() -> None:
    storage = (CONTAINER / "storage.conf.in").read_text()
    engine = (CONTAINER / "containers.conf.in").read_text()
    assert 'graphroot = "@DIR@/storage"' in storage
    assert 'runtime = "runc"' in engine and 'cgroup_manager = "cgroupfs"' in engine
    assert "@NOFILE@" in engine


def test_make_serve_listens_on_loopback_only() -> None:
    makefile = (ROOT / "Makefile").read_text()
    serve = re.search(r"^serve:.*\n\t(.*)", makefile, re.MULTILINE)
    assert serve and "--host 127.0.0.1" in serve[1]
