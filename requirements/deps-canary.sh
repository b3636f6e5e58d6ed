#!/usr/bin/env bash
# `make deps-canary` (docs/dependencies.md): would the newest releases work? In a throwaway venv,
# installs the newest versions pyproject.toml allows, with the exact pins of the libraries whose
# internals the service reaches into lifted (uvicorn, starlette, kantoku, bentoml, fastapi: the
# upgrade candidates), prints every version that differs from the test lock, then runs the
# start-up hook checks and the test suite there (each server the tests start checks its hooks).
#
#   requirements/deps-canary.sh [pytest arguments]      e.g. -x -k "not fuzz"
#
# LIFT="uvicorn ..." names other packages to unpin; KEEP_VENV=1 keeps the venv for a look.
# Never in CI: it depends on what was released today. Not a lock: `make lock UPGRADE=...` is.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
ort="${ORT:-cpu}"
lift="${LIFT:-uvicorn starlette kantoku bentoml fastapi}"

work="$(mktemp -d)"
venv="$work/venv"
if [ -n "${KEEP_VENV:-}" ]; then echo "deps-canary: the venv stays in $venv"; else trap 'rm -rf "$work"' EXIT; fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip

# pyproject.toml's requirements for the test set, those named in $lift without their versions.
"$venv/bin/python" - "$ort" $lift >"$work/canary.in" <<'EOF'
import re
import sys
import tomllib

ort, lift = sys.argv[1], set(sys.argv[2:])
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [ort, "train", "dev", "bench", "load"]
for requirement in project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]:
    name, extra, rest = re.match(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?(.*)", requirement).groups()
    if name.lower() in lift:
        marker = rest.partition(";")[2]
        requirement = name + (extra or "") + (f"; {marker}" if marker else "")
    print(requirement)
EOF
echo "deps-canary: unpinned $lift"
# torch as `make test` installs it (its CPU build), then the newest of everything else.
torch="$(grep '^torch==' "$work/canary.in")"
"$venv/bin/pip" install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$torch"
"$venv/bin/pip" install -q -r "$work/canary.in"
"$venv/bin/pip" install -q --no-deps -e .

# The upgrade candidates: every installed version that is not the lock's.
"$venv/bin/python" - "requirements/test-$ort.lock" <<'EOF'
import importlib.metadata
import re
import sys

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

lock = dict(
    (canonical(m[1]), m[2])
    for m in re.finditer(r"^([A-Za-z0-9._-]+)==([^ \\]+)", open(sys.argv[1]).read(), re.MULTILINE)
)
running = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
changed = [f"  {n} {lock[n]} -> {v}" for n, v in sorted(running.items()) if n in lock and lock[n] != v]
expected = {"pip", "torch", "modelserve"}  # never in the lock (docs/dependencies.md)
new = [f"  {n} {v} (new)" for n, v in sorted(running.items()) if n not in lock and n not in expected]
print(f"deps-canary: against {sys.argv[1]}:", *(changed + new or ["  nothing changed"]), sep="\n")
EOF

# The hooks the arbiter checks when it imports the service (seconds); a server checks the rest at
# start, which the suite's many servers do.
"$venv/bin/python" -c "import service.bento_service" && echo "deps-canary: the arbiter's hook checks pass"
# The lock's own tests would fail by design here: they check the locked environment.
"$venv/bin/python" -m pytest --deselect tests/test_locks.py::test_installed_versions_are_the_locks \
    --deselect tests/test_locks.py::test_nothing_is_installed_outside_the_lock "$@"
echo "deps-canary: the tests pass on these versions; to adopt them, raise the pins in" \
    "pyproject.toml, then 'make lock UPGRADE=\"<packages>\"' and 'make test'"
