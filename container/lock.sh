#!/usr/bin/env bash
# Writes every lock file (pinned versions with sha256 hashes), or with --check, regenerates them
# into a temporary folder and fails if any differs from the committed one.
#
# The images' (container/Dockerfile, container/Dockerfile.gpu):
#   container/requirements-cpu.lock    dependencies + cpu extra          CPU image: Python 3.11, glibc 2.36
#   container/requirements-gpu.lock    dependencies + gpu extra          GPU image: Python 3.12, glibc 2.39
#   container/requirements-build.lock  [build-system] requires (pure Python: both images)
#   container/requirements-sbom.lock   the SBOM generator (sbom-tool.in)
# The local environment's (the Makefile: Python 3.11 on Linux x86_64, glibc 2.28 or newer):
#   requirements/test-cpu.lock    dependencies + cpu + train, dev, bench, load   make test, bench, lint...
#   requirements/test-gpu.lock    dependencies + gpu + train, dev, bench, load   the same on a GPU host
#   requirements/serve-gpu.lock   dependencies + gpu                             make serve on a GPU host
# (`make serve` on a CPU host installs the image's own container/requirements-cpu.lock.)
#
# The widest set, test-cpu, is resolved first and every other set under it as constraints, so a
# package has one version everywhere: local, CI and the CPU image run the same versions. The GPU
# image alone is resolved on its own, for its Python 3.12. torch is left out of the test locks
# and its CUDA packages out of their resolution (docs/dependencies.md says why).
#
# Each lock is resolved with the committed file as the starting point (uv keeps its pins), so
# a check fails only when pyproject.toml (or an input file) asks for something the lock does not
# satisfy, never because of an unrelated upstream release. `make lock UPGRADE="pkg ..."` lets
# those packages move to the newest versions allowed.
set -euo pipefail
cd "$(dirname "$0")/.."
uv="${UV:-uv}"
python="${PYTHON:-python3}"
check=false
[ "${1:-}" = --check ] && check=true
upgrade=()
for package in ${UPGRADE:-}; do upgrade+=(--upgrade-package "$package"); done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/container" "$work/requirements"

# The build backend's requirements, read from pyproject.toml so they are written down once.
"$python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
    >"$work/build-system.in"

# lock PATH PYTHON PLATFORM INPUT...: writes $work/PATH, then compares it with or copies it to PATH.
lock() {
    local path="$1" python_version="$2" platform="$3"
    shift 3
    local out="$work/$path"
    [ -f "$path" ] && cp "$path" "$out"
    "$uv" pip compile --quiet --generate-hashes --no-annotate \
        --python-version "$python_version" --python-platform "$platform" \
        --custom-compile-command "make lock" ${upgrade[@]+"${upgrade[@]}"} --output-file "$out" "$@"
    if $check; then
        if ! diff -u "$path" "$out"; then
            echo "error: $path is not current with its inputs: run 'make lock' and commit it" >&2
            return 1
        fi
    else
        cp "$out" "$path"
    fi
}

# The local sets, on the oldest glibc the project's wheels need (torch's: manylinux_2_28).
local=x86_64-manylinux_2_28
# pyproject.toml's extras in the test sets: everything the Makefile's targets run.
test_extras=(--extra train --extra dev --extra bench --extra load)
# torch: pinned in pyproject.toml, installed by the Makefile from pip's own sources (its CPU
# build); its Linux wheel on PyPI declares CUDA packages that the CPU build does not need.
torch=(--no-emit-package torch --overrides requirements/torch-cpu.overrides)
test_cpu=(--constraint "$work/requirements/test-cpu.lock")

status=0
lock requirements/test-cpu.lock 3.11 "$local" pyproject.toml "$work/build-system.in" --extra cpu \
    "${test_extras[@]}" "${torch[@]}" || status=1
# A GPU host runs CI's versions of everything but ONNX Runtime's build.
lock requirements/test-gpu.lock 3.11 "$local" pyproject.toml "$work/build-system.in" --extra gpu \
    "${test_extras[@]}" "${torch[@]}" "${test_cpu[@]}" || status=1
lock requirements/serve-gpu.lock 3.11 "$local" pyproject.toml --extra gpu \
    --constraint "$work/requirements/test-gpu.lock" || status=1
# The CPU image: Debian bookworm (glibc 2.36, Python 3.11).
lock container/requirements-cpu.lock 3.11 x86_64-manylinux_2_36 pyproject.toml --extra cpu "${test_cpu[@]}" || status=1
lock container/requirements-build.lock 3.11 x86_64-manylinux_2_36 "$work/build-system.in" "${test_cpu[@]}" || status=1
# The GPU image: CUDA's Ubuntu 24.04 runtime image (glibc 2.39, Python 3.12).
lock container/requirements-gpu.lock 3.12 x86_64-manylinux_2_39 pyproject.toml --extra gpu || status=1
lock container/requirements-sbom.lock 3.11 x86_64-manylinux_2_36 container/sbom-tool.in || status=1
$check && [ "$status" = 0 ] && echo "lock files are current"
exit "$status"
