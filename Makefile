# The commands a newcomer needs: `make serve` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 3000
# The GPU build of ONNX Runtime where a GPU is visible, the lean CPU build everywhere else.
ORT    ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: serve test models smoke-train lint format bench loadtest build clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# One stamp per set of extras, so a change to pyproject.toml reinstalls.
$(VENV)/.serve-$(ORT): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[$(ORT)]"
	touch $@

$(VENV)/.test-$(ORT): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[$(ORT),train,dev]"
	touch $@

$(VENV)/.bench-$(ORT): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[$(ORT),bench,load]"
	touch $@

## serve: install the service and serve model_store/ on http://127.0.0.1:$(PORT)
serve: $(VENV)/.serve-$(ORT)
	$(BIN)/bentoml serve --port $(PORT)

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

## bench: server vs bare FastAPI vs in-process ONNX Runtime (writes docs/benchmarks.md)
bench: $(VENV)/.bench-$(ORT)
	$(BIN)/python bench/run.py

## loadtest: Locust against a running `make serve` (stops by itself after 80 s)
loadtest: $(VENV)/.bench-$(ORT)
	$(BIN)/locust -f loadtests/locustfile.py --host http://127.0.0.1:$(PORT) --headless --only-summary

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
