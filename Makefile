# The commands a newcomer needs: `make serve` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 3000
# The GPU build of ONNX Runtime where a GPU is visible, the lean CPU build everywhere else.
ORT    ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: serve test models smoke-train lint format fuzz bench loadtest build clean deps-canary

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Installs come from lock files with hashes, made from pyproject.toml by `make lock`
# (docs/dependencies.md): the serving set (on a CPU host the image's own lock) and the test set,
# everything the other targets run. Both are resolved for Python 3.11 on Linux x86_64.
SERVE_LOCK := $(if $(filter gpu,$(ORT)),requirements/serve-gpu.lock container/requirements-build.lock,container/requirements-cpu.lock container/requirements-build.lock)
TEST_LOCK  := requirements/test-$(ORT).lock
# torch is pinned by version only: pip's own sources give its CPU build here; elsewhere name
# an index that has it, e.g. `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH       = $(shell sed -n 's/^ *"\(torch==[^"]*\)",*$$/\1/p' pyproject.toml)
TORCH_INDEX ?=

# install-locked LOCKS: exactly the locks' versions, each file checked against its sha256 (pip
# refuses a file, or a dependency, that the lock does not list), then the project itself without
# dependencies, built by the locked setuptools.
define install-locked
@$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
  echo "error: the lock files are for Python 3.11; make clean, then PYTHON=python3.11" >&2; exit 1; }
$(BIN)/pip install -q --require-hashes --only-binary=:all: $(addprefix -r ,$(1))
$(BIN)/pip install -q --no-deps --no-build-isolation -e .
endef

# One stamp per set, so a change to a lock or to pyproject.toml reinstalls.
$(VENV)/.serve-$(ORT): $(SERVE_LOCK) pyproject.toml | $(BIN)/python
	$(call install-locked,$(SERVE_LOCK))
	touch $@

$(VENV)/.test-$(ORT): $(TEST_LOCK) pyproject.toml | $(BIN)/python
	$(call install-locked,$(TEST_LOCK))
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	touch $@

# The benchmark's and the dev tools' sets are the test set: one environment, one lock.
$(VENV)/.bench-$(ORT): $(VENV)/.test-$(ORT)
	touch $@

## serve: install the service and serve model_store/ on http://127.0.0.1:$(PORT)
serve: $(VENV)/.serve-$(ORT)
	$(BIN)/bentoml serve --host 127.0.0.1 --port $(PORT)

## test: install what the tests need and run them
test: $(VENV)/.test-$(ORT)
	$(BIN)/pytest

## models: retrain the three default models from scratch into model_store/
models: $(VENV)/.test-$(ORT)
	$(BIN)/python -m training train all

lint: $(VENV)/.test-$(ORT)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test-$(ORT)
	$(BIN)/ruff format .

## fuzz: schemathesis over /docs.json, the long run (every operation; no 5xx, no answer off the document, at least 1,000 answers that reach a model)
fuzz: $(VENV)/.test-$(ORT)
	MODELSERVE_FUZZ_EXAMPLES=200 $(BIN)/pytest tests/test_openapi_fuzz.py -s
	MODELSERVE_FUZZ_MODE=positive MODELSERVE_FUZZ_EXAMPLES=300 MODELSERVE_FUZZ_MIN_2XX=1000 \
	  $(BIN)/pytest tests/test_openapi_fuzz.py -s

## bench: server vs bare FastAPI vs in-process ONNX Runtime (writes docs/evidence/benchmarks.md)
bench: $(VENV)/.bench-$(ORT)
	$(BIN)/python -m bench

# The step load's peak users (10 requests/s each) and the p99 it must stay under: sized from
# the capacity measured on a shared 2-core machine (docs/loadtesting.md). Override on the
# command line, e.g. `make loadtest LOADTEST_USERS=40 LOADTEST_MAX_P99_MS=250`.
LOADTEST_USERS      ?= 20
LOADTEST_MAX_P99_MS ?= 1000
.PHONY: loadtest-smoke

## loadtest: Locust against a running `make serve`: 80 s of step load, every workload; fails on any failed request or p99 over LOADTEST_MAX_P99_MS; results in loadtests/results/
loadtest: $(VENV)/.bench-$(ORT)
	run=loadtests/results/$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/locust -f loadtests/locustfile.py --host http://127.0.0.1:$(PORT) --headless --only-summary \
	  --shape step --shape-users $(LOADTEST_USERS) --max-p99-ms $(LOADTEST_MAX_P99_MS) --max-fail-ratio 0 \
	  --csv $$run/locust --csv-full-history --html $$run/locust_report.html

## loadtest-smoke: start the service, 30 s of every workload, fail on any failed request (CI)
loadtest-smoke: $(VENV)/.bench-$(ORT)
	$(BIN)/python loadtests/smoke.py

# ---- The container image (docs/container.md) ----
VERSION        := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE          ?= localhost/modelserve
# Podman's storage and configuration for this repository, never the machine's own.
CONTAINERS_DIR ?= $(CURDIR)/.containers
container-host image image-test image-gpu: export CONTAINERS_DIR := $(CONTAINERS_DIR)
container-host image image-test image-gpu: export CONTAINERS_STORAGE_CONF := $(CONTAINERS_DIR)/storage.conf
container-host image image-test image-gpu: export CONTAINERS_CONF := $(CONTAINERS_DIR)/containers.conf

.PHONY: container-host image image-test image-gpu lock lock-check lint-docker

# The service and the dev tools (uv, hadolint, httpx, tritonclient): what the image targets run.
$(VENV)/.dev-$(ORT): $(VENV)/.test-$(ORT)
	touch $@

# podman, buildah, runc and debootstrap from Debian's packages when missing, and the private
# podman configuration in $(CONTAINERS_DIR).
container-host:
	container/host-setup.sh

## image: build localhost/modelserve:$(VERSION) and :latest, dist/modelserve-cpu.oci.tar and .sbom.json
# BASE_IMAGE=<a registry's debian:bookworm-slim> skips the local debootstrap base.
image: container-host $(VENV)/.serve-$(ORT)
	$(if $(BASE_IMAGE),,container/base-image.sh)
	BENTOML=$(BIN)/bentoml PYTHON=$(BIN)/python IMAGE=$(IMAGE) container/build.sh

## image-test: run the built image on one CPU and check it end to end; the container is always removed
image-test: container-host $(VENV)/.dev-$(ORT)
	name=modelserve-image-test-$$$$; \
	trap 'podman rm --force --ignore '"$$name"' >/dev/null 2>&1' EXIT; \
	$(BIN)/python container/image_test.py --image $(IMAGE):$(VERSION) --name $$name

## image-gpu: the CUDA image, $(IMAGE):$(VERSION)-gpu; needs a registry serving nvidia/cuda images
image-gpu: container-host $(VENV)/.serve-$(ORT)
	BENTOML=$(BIN)/bentoml PYTHON=$(BIN)/python IMAGE=$(IMAGE) VARIANT=gpu container/build.sh

## lock: regenerate every lock file (requirements/*.lock, container/requirements-*.lock) from pyproject.toml; UPGRADE="pkg ..." moves those packages to their newest allowed versions
lock: $(VENV)/.dev-$(ORT)
	UV=$(BIN)/uv PYTHON=$(BIN)/python UPGRADE="$(UPGRADE)" container/lock.sh

## lock-check: fail if any lock file is not current with pyproject.toml
lock-check: $(VENV)/.dev-$(ORT)
	UV=$(BIN)/uv PYTHON=$(BIN)/python container/lock.sh --check

## deps-canary: the newest versions pyproject.toml allows, uvicorn, starlette, kantoku, bentoml and fastapi unpinned, in a throwaway venv; runs the test suite there (not in CI; docs/dependencies.md)
deps-canary:
	PYTHON=$(PYTHON) ORT=$(ORT) TORCH_INDEX=$(TORCH_INDEX) requirements/deps-canary.sh $(PYTEST_ARGS)

## lint-docker: hadolint over the CPU and GPU Dockerfiles
lint-docker: $(VENV)/.dev-$(ORT)
	$(BIN)/hadolint --no-color container/Dockerfile container/Dockerfile.gpu

# ---- The operations kit (docs/operations.md, docs/security.md) ----
.PHONY: ops-check

## ops-check: promtool over the Prometheus config, alert rules and their unit tests; haproxy -c over the TLS example; installs prometheus and haproxy from Debian's packages if missing
ops-check:
	deploy/ops-host-setup.sh
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml
	dir=$$(mktemp -d); TLS_EXAMPLE_DIR=$$dir deploy/tls/run-example.sh --check; status=$$?; rm -rf $$dir; exit $$status

# ---- A fleet behind HAProxy, and the pod as Kubernetes runs it (docs/fleet.md) ----
.PHONY: fleet-test kube-play-test

## fleet-test: HAProxy (deploy/haproxy) in front of three replicas under Locust: rolling SIGTERM restart and model rollout with 0 failed requests, SIGKILL counted; writes docs/evidence/fleet.md
# Installs Debian's haproxy when missing. The script stops everything it started however it ends;
# `timeout` bounds it from outside too (SIGTERM first, which it turns into a clean stop).
fleet-test: $(VENV)/.bench-$(ORT)
	deploy/haproxy/install-haproxy.sh
	timeout --kill-after=30 480 $(BIN)/python loadtests/fleet.py --deadline-s 420 --evidence docs/evidence/fleet.md

kube-play-test: export CONTAINERS_DIR := $(CONTAINERS_DIR)
kube-play-test: export CONTAINERS_STORAGE_CONF := $(CONTAINERS_DIR)/storage.conf
kube-play-test: export CONTAINERS_CONF := $(CONTAINERS_DIR)/containers.conf

## kube-play-test: after `make image`: podman kube play of the rendered Deployment (as rendered, then with a 1-CPU limit), checked; the pod is always removed; writes docs/evidence/kube-play.md
kube-play-test: container-host $(VENV)/.dev-$(ORT)
	timeout --kill-after=30 420 $(BIN)/python container/kube_play_test.py --cpu-limit 1 --evidence docs/evidence/kube-play.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
