"""schemathesis over the service's OpenAPI document (/docs.json), against a real server.

Every operation, every check (tests/schemathesis.toml says which are off where, and why):
no answer may be a 5xx, every answer must match the document (status, content type, body
schema, headers), and enough generated requests must reach the models (2xx), V2 infer
included. The run here is short; ``make fuzz`` runs the two long ones: valid and invalid
requests, then valid ones only, which must bring at least 1,000 answers from a model::

    MODELSERVE_FUZZ_EXAMPLES=200 pytest tests/test_openapi_fuzz.py -s
    MODELSERVE_FUZZ_MODE=positive MODELSERVE_FUZZ_EXAMPLES=300 MODELSERVE_FUZZ_MIN_2XX=1000 \
        pytest tests/test_openapi_fuzz.py -s

The HAR archive and the JSON report of the run stay in the test's temporary folder; the
summary (requests, 2xx and 4xx per operation) is printed.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server, serve

CONFIG = Path(__file__).with_name("schemathesis.toml")
# Generated cases per operation and phase, and how many answers must come from a model (a 2xx
# on an inference operation; metadata and health answers do not count).
EXAMPLES = int(os.environ.get("MODELSERVE_FUZZ_EXAMPLES", "25"))
MIN_2XX = int(os.environ.get("MODELSERVE_FUZZ_MIN_2XX", "100"))
# "all" (valid and invalid requests), or "positive" (valid ones only: the most answers from a model).
MODE = os.environ.get("MODELSERVE_FUZZ_MODE", "all")
# A fixed seed: a failure in CI replays the same cases (`st replay` with the printed id).
SEED = int(os.environ.get("MODELSERVE_FUZZ_SEED", "20261126"))
RUN_TIMEOUT_S = 120 + 6 * EXAMPLES

pytestmark = pytest.mark.skipif(
    shutil.which("st", path=str(Path(sys.executable).parent)) is None,
    reason="schemathesis is not installed (pip install -e '.[dev]')",
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Server:
    """A server of its own: the fuzzer's flood of bad requests must not share one with other tests."""
    with serve(tmp_path_factory.mktemp("fuzzed"), workers="2") as running:
        yield running


def run_schemathesis(url: str, reports: Path) -> subprocess.CompletedProcess[str]:
    st = str(Path(sys.executable).parent / "st")
    command = [
        st,
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{url}/docs.json",
        "--mode",
        MODE,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        # One worker: schemathesis's threads trip over Hypothesis internals now and then.
        "--workers",
        "1",
        "--report",
        "har,json",
        "--report-dir",
        str(reports),
    ]
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    # Run in the reports' folder: schemathesis keeps a cache in its working directory.
    return subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=reports.parent
    )


INFERENCE_OPERATIONS = (
    "POST /classify",
    "POST /classify_image",
    "POST /forecast",
    "POST /generate",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
)


def operation_of(entry: dict) -> str:
    """``POST /v2/models/classifier/infer`` -> ``POST /v2/models/{name}/infer``, for the summary."""
    parts = entry["request"]["url"].split("?", 1)[0].split("/", 3)[3].split("/")
    if parts[:2] == ["v2", "models"] and len(parts) > 2:
        parts[2] = "{name}"
        if len(parts) > 4 and parts[3] == "versions":
            parts[4] = "{version}"
    return f"{entry['request']['method']} /{'/'.join(parts)}"


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(fuzzed, tmp_path):
    reports = tmp_path / "reports"
    finished = run_schemathesis(fuzzed.url, reports)
    output = finished.stdout + finished.stderr
    report = json.loads(next(reports.glob("json-*.json")).read_text())
    entries = json.loads(next(reports.glob("har-*.json")).read_text())["log"]["entries"]

    by_operation: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for entry in entries:
        by_operation[operation_of(entry)][entry["response"]["status"] // 100] += 1
    print(f"\n{'operation':<48} {'requests':>8} {'2xx':>6} {'4xx':>6} {'5xx':>4}")
    for operation, classes in sorted(by_operation.items()):
        total = sum(classes.values())
        print(f"{operation:<48} {total:>8} {classes[2]:>6} {classes[4]:>6} {classes[5]:>4}")
    totals = sum(by_operation.values(), collections.Counter())
    print(f"{'all':<48} {sum(totals.values()):>8} {totals[2]:>6} {totals[4]:>6} {totals[5]:>4}")

    assert report["operations"]["tested"] == report["operations"]["selected"] > 0, output[-3000:]
    assert report["test_cases"]["errored"] == 0, output[-6000:]
    assert report["failures"] == [], output[-6000:]
    assert finished.returncode == 0, output[-6000:]
    assert totals[5] == 0, [e["request"]["url"] for e in entries if e["response"]["status"] >= 500]
    inferred = {op: classes[2] for op, classes in by_operation.items() if op in INFERENCE_OPERATIONS}
    print(f"answers from a model (2xx on an inference operation): {sum(inferred.values())}")
    assert sum(inferred.values()) >= MIN_2XX, f"too few answers came from a model: {inferred}"
    assert all(inferred.get(op) for op in INFERENCE_OPERATIONS), (
        f"an operation never reached a model: {inferred}"
    )
    with fuzzed.client() as http:
        assert http.get("/readyz").status_code == 200
