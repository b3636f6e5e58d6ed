"""The Locust load tests: the gate's verdict and exit code, shapes, tags, result files, and the
answer checks, with short real Locust runs against a real server."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from PIL import Image

from loadtests.modelserve_locust import checks, gate, payloads, shapes
from loadtests.modelserve_locust.local_service import REPOSITORY as ROOT
from loadtests.modelserve_locust.local_service import free_port

LOCUST = Path(sys.executable).parent / "locust"
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
needs_locust = pytest.mark.skipif(not LOCUST.exists(), reason="Locust is not installed (the `load` extra)")
EVERY_REQUEST = {
    "/classify",
    "/classify_image",
    "/forecast",
    "/generate",
    "/v2/models/classifier/infer [json]",
    "/v2/models/forecaster/infer [json]",
    "/v2/models/classifier/infer [binary]",
    "/v2/models/forecaster/infer [binary]",
    "/v2/models/generator/infer [binary]",
}


def locust(host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LOCUST), "-f", str(LOCUSTFILE), "--host", host, "--headless", "--only-summary", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def last_line(run: subprocess.CompletedProcess) -> str:
    return run.stdout.strip().splitlines()[-1]


def request_names(stats_csv: Path) -> set[str]:
    with open(stats_csv, newline="") as handle:
        return {row["Name"] for row in csv.DictReader(handle)} - {"Aggregated"}


# --- short runs against the server ------------------------------------------------------------


@pytest.mark.slow
@needs_locust
def test_a_plain_run_checks_every_workload_passes_and_writes_its_results(server, tmp_path):
    run = locust(server.url, "-u", "4", "-r", "4", "-t", "6s", "--results-dir", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert last_line(run).startswith("Load test PASSED: p99 "), run.stdout
    assert "Locust CPU: mean" in run.stdout
    [folder] = tmp_path.iterdir()  # one run, one folder named by its start time
    names = {path.name for path in folder.iterdir()}
    assert {"locust_stats.csv", "locust_stats_history.csv", "locust_report.html"} <= names
    assert {"locust_failures.csv", "locust_cpu.csv", "locust_verdict.json"} <= names
    assert request_names(folder / "locust_stats.csv") == EVERY_REQUEST
    verdict = json.loads((folder / "locust_verdict.json").read_text())
    assert verdict["passed"] and verdict["measured"]["failures"] == 0 and verdict["measured"]["requests"] > 50
    assert verdict["locust_cpu"]["process_mean_percent"] is not None


@pytest.mark.slow
@needs_locust
def test_an_impossible_latency_bound_fails_the_run_and_tags_pick_one_workload(server, tmp_path):
    run = locust(
        server.url,
        *("-u", "2", "-r", "2", "-t", "3s", "--tags", "v2-binary", "--max-p99-ms", "0.001"),
        *("--csv", str(tmp_path / "run")),
    )
    assert run.returncode == 1
    verdict = last_line(run)
    assert verdict.startswith("Load test FAILED: p99 ") and verdict.endswith("over --max-p99-ms 0.001")
    assert request_names(tmp_path / "run_stats.csv") == {n for n in EVERY_REQUEST if n.endswith("[binary]")}
    assert (tmp_path / "run_verdict.json").exists()  # beside the CSV files asked for


@pytest.mark.slow
@needs_locust
def test_a_shape_bounds_users_and_time_whatever_the_command_line_says(server, tmp_path):
    run = locust(
        server.url,
        *("--shape", "step", "--shape-users", "2", "--shape-seconds", "4"),
        *(
            "-u",
            "50",
            "-t",
            "10m",
            "--tags",
            "classify",
            "--csv",
            str(tmp_path / "run"),
            "--csv-full-history",
        ),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "-u, -t ignored" in run.stderr
    with open(tmp_path / "run_stats_history.csv", newline="") as handle:
        users = [int(row["User Count"]) for row in csv.DictReader(handle)]
    assert max(users) == 2 and len(users) < 30  # a row per second: it stopped after the shape


@pytest.mark.slow
@needs_locust
def test_failed_requests_fail_the_run_unless_the_ratio_allows_them(tmp_path):
    nobody = f"http://127.0.0.1:{free_port()}"  # connections refused: every request fails
    strict = locust(nobody, "-u", "1", "-t", "2s", "--tags", "classify", "--no-results")
    assert strict.returncode == 1
    assert "requests failed (100.000%), over --max-fail-ratio 0" in last_line(strict)
    lenient = locust(
        nobody, "-u", "1", "-t", "2s", "--tags", "classify", "--no-results", "--max-fail-ratio", "1"
    )
    assert lenient.returncode == 0 and last_line(lenient).startswith("Load test PASSED")


# --- the pieces ---------------------------------------------------------------------------------


def test_the_verdict_names_each_broken_bound_and_its_measured_value():
    passed = gate.judge(gate.Measured(1000, 0, 42.0), 100.0, 0.0)
    assert passed.passed and passed.line == (
        "Load test PASSED: p99 42 ms (--max-p99-ms 100), "
        "0 of 1,000 requests failed (0.000%) (--max-fail-ratio 0)"
    )
    both = gate.judge(gate.Measured(1000, 3, 420.0), 100.0, 0.001)
    assert not both.passed
    assert "3 of 1,000 requests failed (0.300%), over --max-fail-ratio 0.001" in both.line
    assert "p99 420 ms, over --max-p99-ms 100" in both.line
    assert gate.judge(gate.Measured(1000, 1, 420.0), None, 0.01).passed  # no p99 bound unless asked
    assert not gate.judge(gate.Measured(0, 0, 0.0), None, 0.0).passed  # no requests is no pass


@pytest.mark.parametrize("name", ["step", "ramp", "spike"])
def test_shapes_stop_at_their_length_and_never_pass_their_peak(name):
    plan = shapes.plan(name, 40, 60)
    ticks = [plan.at(t / 10) for t in range(600)]
    assert all(tick is not None and 1 <= tick[0] <= 40 for tick in ticks)
    assert max(tick[0] for tick in ticks) == 40
    assert plan.at(60) is None and plan.at(1e6) is None


def test_v2_binary_requests_are_byte_for_byte_what_tritonclient_sends():
    history = np.array([[315.5, 316.25, 317.0], [320.0, 0.0, 0.0]], dtype=np.float32)
    lengths = np.array([3, 1], dtype=np.int64)
    ours, header_length = payloads.v2_binary_body(
        [payloads.Tensor("history", "FP32", history), payloads.Tensor("lengths", "INT64", lengths)]
    )
    inputs = [triton.InferInput("history", [2, 3], "FP32"), triton.InferInput("lengths", [2], "INT64")]
    inputs[0].set_data_from_numpy(history, binary_data=True)
    inputs[1].set_data_from_numpy(lengths, binary_data=True)
    theirs, their_header_length = triton.InferenceServerClient.generate_request_body(inputs)
    assert orjson.loads(ours[:header_length]) == json.loads(theirs[:their_header_length])
    assert ours[header_length:] == theirs[their_header_length:]


def test_binary_and_json_v2_answers_decode_to_the_same_tensors():
    probabilities = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32)
    header = orjson.dumps(
        {
            "model_name": "classifier",
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [2, 2],
                    "parameters": {"binary_data_size": 16},
                }
            ],
        }
    )
    _, binary = payloads.v2_outputs(header + probabilities.tobytes(), str(len(header)))
    as_json = orjson.dumps(
        {
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 1, 0]}
            ]
        }
    )
    _, inline = payloads.v2_outputs(as_json, None)
    np.testing.assert_array_equal(binary["probabilities"], inline["probabilities"])
    with pytest.raises(ValueError):  # a tail longer than the outputs claim
        payloads.v2_outputs(header + probabilities.tobytes() + b"\0", str(len(header)))


def test_inputs_are_digit_like_pictures_and_co2_like_histories_up_to_the_longest_row():
    pools = payloads.pools(payloads.ForecasterLimits(104, 1040, 52), 32)
    assert pools.digits.shape == (payloads.DIGIT_POOL, 8, 8)
    assert pools.digits.min() == 0 and pools.digits.max() == 16
    lengths = [len(h) for h in pools.histories]
    assert min(lengths) >= 104 and max(lengths) == 1040 and len(set(lengths)) > 50
    assert all(h.min() > 300 and h.max() < 450 for h in pools.histories)  # ppm, 1958 to today
    body, content_type = pools.pictures[0]
    boundary = content_type.split("boundary=")[1]
    png = body.split(b"\r\n\r\n", 1)[1].rsplit(f"\r\n--{boundary}--".encode(), 1)[0]
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and np.asarray(picture.convert("L"))[0, 0] == 255  # light background


def test_checks_reject_wrong_answers_and_answers_that_change_between_requests():
    refs = checks.References()
    right = {"labels": [3], "probabilities": [[0.0, 0.0, 0.0, 0.91, 0.09, 0, 0, 0, 0, 0]]}
    checks.classify(orjson.dumps(right), [7], refs)
    for wrong, reason in [
        ({"labels": [4], "probabilities": right["probabilities"]}, "not the most probable"),
        ({"labels": [3], "probabilities": [[0.5] * 10]}, "do not sum to 1"),
        ({"labels": [3, 1], "probabilities": right["probabilities"]}, "one label per image"),
        ({"labels": [3]}, "lacks labels, probabilities"),
    ]:
        with pytest.raises(checks.WrongAnswer, match=reason):
            checks.classify(orjson.dumps(wrong), [7], checks.References())
    changed = {"labels": [3], "probabilities": [[0.0, 0.0, 0.0, 0.8, 0.2, 0, 0, 0, 0, 0]]}
    with pytest.raises(checks.WrongAnswer, match="differs by over"):
        checks.classify(orjson.dumps(changed), [7], refs)  # the same image, a different answer
    pixels = Image.fromarray(np.full((8, 8), 255, np.uint8))
    buffer = io.BytesIO()
    pixels.resize((9, 9)).save(buffer, format="PNG")
    answer = {"images": [base64.b64encode(buffer.getvalue()).decode()], "seed": 1}
    with pytest.raises(checks.WrongAnswer, match="not 8x8 PNG"):
        checks.generate(orjson.dumps(answer), [1], 1, "png", checks.References())
    with pytest.raises(checks.WrongAnswer, match=r"outside 0\.\.16"):
        checks.generate(orjson.dumps({"images": [[[17.0] * 8] * 8], "seed": 1}), [1], 1, "array", refs)
