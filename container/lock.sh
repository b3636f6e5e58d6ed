#!/usr/bin/env bash
# Writes the image's lock files (pinned versions with sha256 hashes), or with --check,
# regenerates them into a temporary folder and fails if any differs from the committed one.
#
#   requirements-cpu.lock    pyproject.toml's dependencies + the cpu extra  (container/Dockerfile)
#   requirements-gpu.lock    pyproject.toml's dependencies + the gpu extra  (container/Dockerfile.gpu)
#   requirements-build.lock  pyproject.toml's [build-system] requires (pure Python: both images)
#   requirements-sbom.lock   the SBOM generator (sbom-tool.in)
#
# Each lock is resolved with the committed file as the starting point (uv keeps its pins), so
# a check fails only when pyproject.toml (or an .in file) asks for something the lock does not
# satisfy, never because of an unrelated upstream release.
set -euo pipefail
cd "$(dirname "$0")/.."
uv="${UV:-uv}"
python="${PYTHON:-python3}"
check=false
[ "${1:-}" = --check ] && check=true

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The build backend's requirements, read from pyproject.toml so they are written down once.
"$python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
    >"$work/build-system.in"

# lock NAME PYTHON PLATFORM INPUT...
lock() {
    local name="$1" python_version="$2" platform="$3"
    shift 3
    local committed="container/$name" out="$work/$name"
    [ -f "$committed" ] && cp "$committed" "$out"
    "$uv" pip compile --quiet --generate-hashes --no-annotate \
        --python-version "$python_version" --python-platform "$platform" \
        --custom-compile-command "make lock" --output-file "$out" "$@"
    if $check; then
        if ! diff -u "$committed" "$out"; then
            echo "error: $committed is not current with its inputs: run 'make lock' and commit it" >&2
            return 1
        fi
    else
        cp "$out" "$committed"
    fi
}

status=0
# The CPU image: Debian bookworm (glibc 2.36, Python 3.11).
lock requirements-cpu.lock 3.11 x86_64-manylinux_2_36 pyproject.toml --extra cpu || status=1
# The GPU image: CUDA's Ubuntu 24.04 runtime image (glibc 2.39, Python 3.12).
lock requirements-gpu.lock 3.12 x86_64-manylinux_2_39 pyproject.toml --extra gpu || status=1
lock requirements-build.lock 3.11 x86_64-manylinux_2_36 "$work/build-system.in" || status=1
lock requirements-sbom.lock 3.11 x86_64-manylinux_2_36 container/sbom-tool.in || status=1
$check && [ "$status" = 0 ] && echo "lock files are current"
exit "$status"
