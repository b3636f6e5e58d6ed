"""python -m store_format import: a user's ONNX file into the store, or a refusal that names why.

Every graph is built here with onnx.helper (and, where it is installed, converted by skl2onnx),
imported by running the real command in a subprocess, and its manifest read back field by field.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from store_format import (
    MANIFEST_FILE,
    MODEL_FILE,
    TENSOR_TASK,
    Gate,
    Manifest,
    ManifestError,
    QualityCheck,
    TensorSpec,
    list_versions,
    load_verified,
    read_manifest,
    sha256_of,
)

ROOT = Path(__file__).resolve().parents[1]
OPSET = 17


# --- graphs ----------------------------------------------------------------------------------


def save(path: Path, nodes, inputs, outputs, initializers=(), opset: int = OPSET, domains=()) -> Path:
    graph = oh.make_graph(nodes, path.stem, inputs, outputs, list(initializers))
    opsets = [oh.make_opsetid("", opset), *(oh.make_opsetid(domain, 1) for domain in domains)]
    # IR version 9 is one every ONNX Runtime of this project loads; onnx.helper would pick the newest.
    model = oh.make_model(graph, opset_imports=opsets, ir_version=9)
    onnx.save(model, str(path))
    return path


def value(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, elem_type, shape)


def mlp(path: Path) -> Path:
    """x FP32 [batch, 4] -> two layers -> softmax probabilities y FP32 [batch, 3]."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h"]),
        oh.make_node("Relu", ["h"], ["r"]),
        oh.make_node("MatMul", ["r", "w2"], ["logits"]),
        oh.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    return save(
        path,
        nodes,
        [value("x", TensorProto.FLOAT, ["batch", 4])],
        [value("y", TensorProto.FLOAT, ["batch", 3])],
        weights,
    )


def two_by_two(path: Path) -> Path:
    """features FP32 [n, 3] and counts INT64 [n] -> total FP32 [n] and doubled INT64 [n]."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        oh.make_node("ReduceSum", ["features", "axes"], ["row_sum"], keepdims=0),
        oh.make_node("Cast", ["counts"], ["counts_f"], to=TensorProto.FLOAT),
        oh.make_node("Add", ["row_sum", "counts_f"], ["total"]),
        oh.make_node("Add", ["counts", "counts"], ["doubled"]),
    ]
    return save(
        path,
        nodes,
        [value("features", TensorProto.FLOAT, ["n", 3]), value("counts", TensorProto.INT64, ["n"])],
        [value("total", TensorProto.FLOAT, ["n"]), value("doubled", TensorProto.INT64, ["n"])],
        [axes],
    )


def identity(path: Path, elem_type: int, shape, out_type: int | None = None, opset: int = OPSET) -> Path:
    """x -> y, cast to ``out_type`` when given."""
    if out_type is None:
        node, out_type = oh.make_node("Identity", ["x"], ["y"]), elem_type
    else:
        node = oh.make_node("Cast", ["x"], ["y"], to=out_type)
    return save(path, [node], [value("x", elem_type, shape)], [value("y", out_type, shape)], opset=opset)


def zipmap_classifier(path: Path) -> Path:
    """What skl2onnx writes by default: a label tensor and a sequence of maps (ZipMap)."""
    nodes = [
        oh.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        oh.make_node(
            "ZipMap", ["scores"], ["output_probability"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]
        ),
    ]
    probability = oh.make_map_type_proto(TensorProto.INT64, oh.make_tensor_type_proto(TensorProto.FLOAT, []))
    probabilities = oh.make_value_info("output_probability", oh.make_sequence_type_proto(probability))
    return save(
        path,
        nodes,
        [value("scores", TensorProto.FLOAT, ["n", 3])],
        [value("label", TensorProto.INT64, ["n"]), probabilities],
        domains=["ai.onnx.ml"],
    )


# --- running the command ---------------------------------------------------------------------


def run_import(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "store_format", "import", *(str(a) for a in args)],
        cwd=ROOT,
        env=env or {k: v for k, v in os.environ.items() if k != "MODELSERVE_MODEL_STORE"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def imported(path: Path, store: Path, name: str, *args: Any) -> Manifest:
    result = run_import(path, "--name", name, "--store", store, *args)
    assert result.returncode == 0, result.stderr
    manifest, model_path = load_verified(store, name)
    assert model_path.read_bytes() == path.read_bytes()
    assert (
        f"published {name} version {manifest.version} to {store / name / str(manifest.version)}"
        in result.stdout
    )
    return manifest


def run_published(store: Path, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    manifest, model_path = load_verified(store, name)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [spec.name for spec in manifest.outputs]
    return dict(zip(names, session.run(names, feeds), strict=True))


def snapshot(store: Path) -> dict[str, bytes | None]:
    """Every path under ``store`` with its bytes (None for a folder), to prove nothing changed."""
    return {
        str(p.relative_to(store)): (p.read_bytes() if p.is_file() else None) for p in sorted(store.rglob("*"))
    }


# --- imports ---------------------------------------------------------------------------------


def test_a_batchable_mlp_is_published_with_every_field(tmp_path: Path) -> None:
    source = mlp(tmp_path / "mlp.onnx")
    store = tmp_path / "store"
    manifest = imported(source, store, "mlp")
    saved = json.loads((store / "mlp" / "1" / MANIFEST_FILE).read_text())

    assert saved["format_version"] == 1
    assert (saved["name"], saved["version"], saved["task"]) == ("mlp", 1, TENSOR_TASK)
    assert saved["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert saved["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    assert saved["sha256"] == sha256_of(source) == sha256_of(store / "mlp" / "1" / MODEL_FILE)
    assert saved["opset"] == OPSET
    assert (saved["metrics"], saved["training"], saved["dataset"], saved["labels"]) == ({}, {}, {}, None)
    assert saved["serving"] == {
        "batch_axis": 0,
        "batch_axis_reason": "inferred: axis 0 of every input and output is the dynamic axis 'batch'",
        "max_batch_size": 64,
        "max_wait_ms": 2.0,
        "hidden_outputs": [],
        "dim_names": {"x": ["batch", None], "y": ["batch", None]},
        "description": "",
    }
    assert saved["gate"] == {"verdict": "unchecked", "checks": []}
    assert saved["imported"] == {
        "file": "mlp.onnx",
        "producer_name": "",
        "producer_version": "",
        "graph_name": "mlp",
        "ir_version": 9,
        "opsets": {"ai.onnx": OPSET},
    }
    assert set(saved["producer"]) == {"onnx", "onnxruntime", "python"}
    assert (saved["precision"], saved["derived_from"]) == ("fp32", None)
    assert saved["created_at"].endswith("+00:00")

    assert manifest.servable and manifest.gate is not None and not manifest.gate.checked
    serving = manifest.tensor_serving()
    assert serving.batched and serving.inputs == manifest.inputs and serving.outputs == manifest.outputs
    assert serving.hidden_outputs == ()

    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    y = run_published(store, "mlp", {"x": x})["y"]
    assert y.shape == (5, 3) and np.allclose(y.sum(axis=1), 1.0, atol=1e-6)


def test_a_check_that_matches_passes_the_gate_and_options_are_recorded(tmp_path: Path) -> None:
    source = mlp(tmp_path / "mlp.onnx")
    store = tmp_path / "store"
    imported(source, store, "mlp")  # version 1, unchecked
    x = np.random.default_rng(2).normal(size=(7, 4)).astype(np.float32)
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    check = tmp_path / "check.npz"
    np.savez(check, x=x, y=session.run(["y"], {"x": x})[0] + np.float32(1e-7))

    result = run_import(
        source,
        "--name",
        "mlp",
        "--store",
        store,
        "--check",
        check,
        "--atol",
        "1e-6",
        "--max-batch",
        "16",
        "--max-wait-ms",
        "5",
        "--description",
        "a small MLP",
    )
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(store / "mlp" / "2")
    assert list_versions(store, "mlp") == [1, 2]
    assert manifest.gate == Gate(
        (
            QualityCheck(
                "check_mismatches",
                "<=",
                0.0,
                "every value of the outputs in check.npz within atol 1e-06 + rtol 1e-05 x |expected| "
                "(exactly equal for integers, booleans and strings)",
            ),
        ),
        "passed",
    )
    assert manifest.metrics["check_mismatches"] == 0 and manifest.metrics["check_values"] == 21
    assert manifest.metrics["check_file"] == "check.npz" and manifest.metrics["check_outputs"] == ["y"]
    assert 0 < manifest.metrics["check_max_abs_diff"] <= 1e-6
    assert (manifest.metrics["check_atol"], manifest.metrics["check_rtol"]) == (1e-6, 1e-5)
    serving = manifest.serving
    assert (serving["max_batch_size"], serving["max_wait_ms"], serving["description"]) == (
        16,
        5.0,
        "a small MLP",
    )
    assert "verdict     passed: check_mismatches = 0" in result.stdout


def test_two_inputs_of_different_datatypes_and_two_outputs(tmp_path: Path) -> None:
    source = two_by_two(tmp_path / "pair.onnx")
    store = tmp_path / "store"
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    counts = np.array([1, 2, 3, 4], dtype=np.int64)
    check = tmp_path / "check.npz"
    np.savez(check, features=features, counts=counts, total=features.sum(axis=1) + counts, doubled=2 * counts)
    manifest = imported(source, store, "pair", "--check", check, "--inputs", "counts,features")

    # --inputs orders the inputs; the outputs are the graph's
    assert [s.to_dict() for s in manifest.inputs] == [
        {"name": "counts", "datatype": "INT64", "shape": [-1]},
        {"name": "features", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert [s.to_dict() for s in manifest.outputs] == [
        {"name": "total", "datatype": "FP32", "shape": [-1]},
        {"name": "doubled", "datatype": "INT64", "shape": [-1]},
    ]
    assert manifest.serving["batch_axis"] == 0 and manifest.serving["hidden_outputs"] == []
    assert manifest.serving["dim_names"] == {
        "counts": ["n"],
        "features": ["n", None],
        "total": ["n"],
        "doubled": ["n"],
    }
    assert manifest.gate.verdict == "passed" and manifest.metrics["check_values"] == 8
    answers = run_published(store, "pair", {"features": features, "counts": counts})
    np.testing.assert_array_equal(answers["doubled"], 2 * counts)
    np.testing.assert_array_equal(answers["total"], features.sum(axis=1) + counts)

    # --outputs returns one of them; the other is named as the graph's, not returned
    only = imported(source, store, "pair", "--outputs", "doubled")
    assert only.version == 2 and [s.name for s in only.outputs] == ["doubled"]
    assert only.serving["hidden_outputs"] == ["total"]
    assert only.serving["dim_names"] == {"counts": ["n"], "features": ["n", None], "doubled": ["n"]}
    assert only.tensor_serving().hidden_outputs == ("total",)


def test_dynamic_height_and_width_are_recorded_and_the_model_batches(tmp_path: Path) -> None:
    source = identity(tmp_path / "relu.onnx", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    manifest = imported(source, tmp_path / "store", "images")
    assert manifest.input("x").shape == manifest.output("y").shape == (-1, 3, -1, -1)
    assert manifest.serving["dim_names"] == {
        "x": ["batch", None, "height", "width"],
        "y": ["batch", None, "height", "width"],
    }
    assert manifest.serving["batch_axis"] == 0 and manifest.serving["max_batch_size"] == 64


def test_a_rank_0_input_is_served_one_request_at_a_time(tmp_path: Path) -> None:
    source = save(
        tmp_path / "scaled.onnx",
        [oh.make_node("Mul", ["x", "scale"], ["y"])],
        [value("x", TensorProto.FLOAT, ["n", 4]), value("scale", TensorProto.FLOAT, [])],
        [value("y", TensorProto.FLOAT, ["n", 4])],
    )
    store = tmp_path / "store"
    manifest = imported(source, store, "scaled")
    assert manifest.input("scale").shape == ()
    serving = manifest.serving
    assert (serving["batch_axis"], serving["max_batch_size"], serving["max_wait_ms"]) == (None, 1, 0.0)
    assert serving["batch_axis_reason"] == "'scale' has rank 0, so there is no axis to batch along"
    assert not manifest.tensor_serving().batched

    before = snapshot(store)
    result = run_import(source, "--name", "scaled", "--store", store, "--max-batch", "8")
    assert result.returncode == 1 and "--max-batch 8 needs a batch axis" in result.stderr
    assert "'scale' has rank 0" in result.stderr and snapshot(store) == before
    result = run_import(source, "--name", "scaled", "--store", store, "--batch-axis", "0")
    assert result.returncode == 1 and "'scale' has the shape []" in result.stderr
    assert snapshot(store) == before


def test_a_batch_axis_not_at_0_is_served_one_request_at_a_time(tmp_path: Path) -> None:
    source = identity(tmp_path / "columns.onnx", TensorProto.FLOAT, [4, "n"])
    store = tmp_path / "store"
    manifest = imported(source, store, "columns")
    assert manifest.input("x").shape == (4, -1)
    assert manifest.serving["batch_axis"] is None
    assert manifest.serving["batch_axis_reason"] == "axis 0 of 'x' has the static size 4"

    before = snapshot(store)
    for axis, message in [
        ("1", "requests are batched along axis 0 only"),
        ("0", "'x' has the shape [4, -1], whose axis 0 is not dynamic"),
    ]:
        result = run_import(source, "--name", "columns", "--store", store, "--batch-axis", axis)
        assert result.returncode == 1 and message in result.stderr, result.stderr
    assert snapshot(store) == before


def test_first_axes_named_differently_need_the_batch_axis_option(tmp_path: Path) -> None:
    source = save(
        tmp_path / "renamed.onnx",
        [oh.make_node("Relu", ["x"], ["y"])],
        [value("x", TensorProto.FLOAT, ["batch", 2])],
        [value("y", TensorProto.FLOAT, [None, 2])],
    )
    store = tmp_path / "store"
    inferred = imported(source, store, "renamed")
    assert inferred.serving["batch_axis"] is None
    assert (
        "the first axes are not one axis ('x': batch, 'y': unnamed)" in inferred.serving["batch_axis_reason"]
    )
    forced = imported(source, store, "renamed", "--batch-axis", "0", "--max-batch", "8")
    assert (forced.serving["batch_axis"], forced.serving["max_batch_size"]) == (0, 8)
    assert forced.serving["batch_axis_reason"] == "set with --batch-axis 0"
    off = imported(mlp(tmp_path / "mlp.onnx"), store, "mlp", "--batch-axis", "none")
    assert (off.serving["batch_axis"], off.serving["batch_axis_reason"]) == (
        None,
        "set with --batch-axis none",
    )


def test_strings_are_bytes_and_can_be_checked(tmp_path: Path) -> None:
    source = identity(tmp_path / "echo.onnx", TensorProto.STRING, ["n"])
    words = np.array(["héllo", "", "world"])
    check = tmp_path / "check.npz"
    np.savez(check, x=words, y=words)
    manifest = imported(source, tmp_path / "store", "echo", "--check", check)
    assert manifest.input("x") == TensorSpec("x", "BYTES", (-1,))
    assert manifest.output("y") == TensorSpec("y", "BYTES", (-1,))
    assert manifest.gate.verdict == "passed" and manifest.serving["batch_axis"] == 0
    answer = run_published(tmp_path / "store", "echo", {"x": words.astype(object)})["y"]
    assert answer.tolist() == words.tolist()


def test_an_fp16_input(tmp_path: Path) -> None:
    source = identity(tmp_path / "half.onnx", TensorProto.FLOAT16, ["n", 4], out_type=TensorProto.FLOAT)
    x = np.linspace(-2, 2, 8, dtype=np.float16).reshape(2, 4)
    check = tmp_path / "check.npz"
    np.savez(check, x=x, y=x.astype(np.float32))
    manifest = imported(source, tmp_path / "store", "half", "--check", check)
    assert manifest.input("x") == TensorSpec("x", "FP16", (-1, 4))
    assert manifest.output("y") == TensorSpec("y", "FP32", (-1, 4))
    assert manifest.gate.verdict == "passed"


def test_external_weights_are_folded_into_one_file(tmp_path: Path) -> None:
    proto = onnx.load(str(mlp(tmp_path / "inline.onnx")))
    source = tmp_path / "external.onnx"
    onnx.save(proto, str(source), save_as_external_data=True, location="external.onnx.data", size_threshold=0)
    store = tmp_path / "store"
    result = run_import(source, "--name", "mlp", "--store", store)
    assert result.returncode == 0, result.stderr
    manifest, model_path = load_verified(store, "mlp")
    assert sorted(p.name for p in model_path.parent.iterdir()) == [MANIFEST_FILE, MODEL_FILE]
    published = onnx.load(str(model_path), load_external_data=False)
    assert all(not t.external_data for t in published.graph.initializer)
    x = np.ones((2, 4), dtype=np.float32)
    expected = ort.InferenceSession(str(tmp_path / "inline.onnx"), providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x}
    )[0]
    np.testing.assert_array_equal(run_published(store, "mlp", {"x": x})["y"], expected)
    assert manifest.imported["file"] == "external.onnx"


def test_the_default_store_is_the_services(tmp_path: Path) -> None:
    store = tmp_path / "service-store"
    env = {**os.environ, "MODELSERVE_MODEL_STORE": str(store)}
    result = run_import(mlp(tmp_path / "mlp.onnx"), "--name", "mlp", env=env)
    assert result.returncode == 0, result.stderr
    assert list_versions(store, "mlp") == [1]


def test_an_output_that_is_not_a_tensor_can_be_left_out(tmp_path: Path) -> None:
    source = zipmap_classifier(tmp_path / "zipmap.onnx")
    manifest = imported(source, tmp_path / "store", "labels", "--outputs", "label")
    assert [s.name for s in manifest.outputs] == ["label"]
    assert manifest.serving["hidden_outputs"] == ["output_probability"]


# --- refusals --------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store that already holds mlp/1, so that 'untouched' means something."""
    store = tmp_path / "store"
    imported(mlp(tmp_path / "mlp.onnx"), store, "mlp")
    return store


def refused(store: Path, source: Path, *args: Any, name: str = "mlp") -> str:
    """Import ``source``; it must exit 1 and leave ``store`` byte for byte as it was."""
    before = snapshot(store)
    result = run_import(source, "--name", name, "--store", store, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nothing was published" in result.stderr
    assert snapshot(store) == before
    return result.stderr


def test_a_sequence_of_maps_output_is_refused_with_the_option_that_avoids_it(
    tmp_path: Path, store: Path
) -> None:
    message = refused(store, zipmap_classifier(tmp_path / "zipmap.onnx"), name="iris")
    assert (
        "output 'output_probability' is a sequence of maps (seq(map(int64,tensor(float)))), not a tensor"
        in message
    )
    assert '{"zipmap": False}' in message and "--outputs" in message
    assert not (store / "iris").exists()


def test_a_sequence_output_is_refused(tmp_path: Path, store: Path) -> None:
    source = save(
        tmp_path / "pieces.onnx",
        [oh.make_node("SequenceConstruct", ["x", "x"], ["pieces"])],
        [value("x", TensorProto.FLOAT, ["n", 2])],
        [oh.make_tensor_sequence_value_info("pieces", TensorProto.FLOAT, None)],
    )
    message = refused(store, source)
    assert "output 'pieces' is a sequence (seq(tensor(float))), not a tensor" in message


@pytest.mark.parametrize(
    ("elem_type", "opset", "type_name"),
    [
        (TensorProto.COMPLEX64, OPSET, "COMPLEX64"),
        (TensorProto.BFLOAT16, OPSET, "BFLOAT16"),
        (TensorProto.FLOAT8E4M3FN, 19, "FLOAT8E4M3FN"),
    ],
)
def test_a_datatype_v2_cannot_carry_is_refused(
    tmp_path: Path, store: Path, elem_type, opset, type_name
) -> None:
    message = refused(store, identity(tmp_path / "odd.onnx", elem_type, ["n"], opset=opset))
    assert (
        f"input 'x' has the datatype {type_name}, which the Open Inference Protocol cannot carry" in message
    )


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path, store: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(3).bytes(4096))
    assert f"refused: {garbage} is not an ONNX model" in refused(store, garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(mlp(tmp_path / "whole.onnx").read_bytes()[:-20])
    assert "refused:" in refused(store, truncated)
    assert "is not a file" in refused(store, tmp_path / "missing.onnx")


def test_a_graph_the_checker_refuses_is_refused(tmp_path: Path, store: Path) -> None:
    source = save(
        tmp_path / "ghost.onnx",
        [oh.make_node("Add", ["x", "ghost"], ["y"])],
        [value("x", TensorProto.FLOAT, ["n"])],
        [value("y", TensorProto.FLOAT, ["n"])],
    )
    message = refused(store, source)
    assert "onnx.checker refuses" in message and "ghost" in message


def test_a_graph_onnx_runtime_cannot_load_is_refused(tmp_path: Path, store: Path) -> None:
    source = save(
        tmp_path / "custom.onnx",
        [oh.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        [value("x", TensorProto.FLOAT, ["n"])],
        [value("y", TensorProto.FLOAT, ["n"])],
        domains=["com.example"],
    )
    message = refused(store, source)
    assert "ONNX Runtime cannot load the model" in message and "Frobnicate" in message


def test_a_failing_check_is_refused(tmp_path: Path, store: Path) -> None:
    source = mlp(tmp_path / "mlp2.onnx")
    x = np.ones((3, 4), dtype=np.float32)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=x, y=np.full((3, 3), 0.5, dtype=np.float32))
    message = refused(store, source, "--check", wrong)
    assert "output 'y': 9 of 9 values differ" in message and "beyond atol 1e-05" in message

    mistyped = tmp_path / "mistyped.npz"
    np.savez(mistyped, x=x.astype(np.float64), y=np.zeros((3, 3), dtype=np.float32))
    assert "input 'x' is FP32 (float32), the check holds float64" in refused(
        store, source, "--check", mistyped
    )
    misnamed = tmp_path / "misnamed.npz"
    np.savez(misnamed, x=x, probabilities=np.zeros((3, 3), dtype=np.float32))
    assert "holds ['probabilities'], which are neither inputs" in refused(store, source, "--check", misnamed)


def test_bad_names_are_refused(tmp_path: Path, store: Path) -> None:
    source = mlp(tmp_path / "mlp2.onnx")
    assert "--name 'My Model' is not a model name" in refused(store, source, name="My Model")
    assert "--outputs names ['z'], which the graph does not have" in refused(store, source, "--outputs", "z")
    two = two_by_two(tmp_path / "pair.onnx")
    assert "--inputs leaves out ['counts']" in refused(store, two, "--inputs", "features")


# --- a scikit-learn pipeline converted with skl2onnx ------------------------------------------


def iris_pipeline():
    """skl2onnx's own example of a classifier with probabilities: a pipeline fitted on iris."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, labels)
    return pipeline, features


def test_skl2onnx_default_zipmap_output_is_refused(tmp_path: Path, store: Path) -> None:
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx (the dev extra) is not installed")
    pipeline, features = iris_pipeline()
    source = tmp_path / "iris.onnx"
    source.write_bytes(skl2onnx.to_onnx(pipeline, features[:1]).SerializeToString())
    message = refused(store, source, name="iris")
    assert (
        "output 'output_probability' is a sequence of maps (seq(map(int64,tensor(float)))), not a tensor"
        in message
    )
    assert 'options={id(clf): {"zipmap": False}}' in message


def test_skl2onnx_without_zipmap_imports_and_equals_predict_proba(tmp_path: Path) -> None:
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx (the dev extra) is not installed")
    pipeline, features = iris_pipeline()
    source = tmp_path / "iris.onnx"
    onx = skl2onnx.to_onnx(pipeline, features[:1], options={id(pipeline[-1]): {"zipmap": False}})
    source.write_bytes(onx.SerializeToString())
    check = tmp_path / "check.npz"
    np.savez(check, X=features[:10], probabilities=pipeline.predict_proba(features[:10]).astype(np.float32))
    store = tmp_path / "store"
    manifest = imported(source, store, "iris", "--check", check)

    assert [s.to_dict() for s in manifest.inputs] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert [s.to_dict() for s in manifest.outputs] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert manifest.serving["batch_axis"] == 0
    assert (
        manifest.serving["batch_axis_reason"]
        == "inferred: axis 0 of every input and output is dynamic (unnamed)"
    )
    assert manifest.gate.verdict == "passed"
    assert manifest.imported["producer_name"] == "skl2onnx"
    answers = run_published(store, "iris", {"X": features})
    np.testing.assert_allclose(answers["probabilities"], pipeline.predict_proba(features), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(answers["label"], pipeline.predict(features))


# --- the format's side -----------------------------------------------------------------------


def tensor_fields(**serving: Any) -> dict[str, Any]:
    return {
        "name": "mlp",
        "version": 1,
        "sha256": "f" * 64,
        "task": TENSOR_TASK,
        "inputs": (TensorSpec("x", "FP32", (-1, 4)),),
        "outputs": (TensorSpec("y", "FP32", (-1, 3)),),
        "opset": OPSET,
        "metrics": {},
        "training": {},
        "dataset": {},
        "imported": {"file": "mlp.onnx"},
        "gate": Gate.unchecked(),
        "serving": {
            "batch_axis": 0,
            "max_batch_size": 64,
            "max_wait_ms": 2.0,
            "hidden_outputs": ["z"],
            **serving,
        },
    }


def test_the_format_checks_the_serving_block() -> None:
    resolved = Manifest(**tensor_fields()).tensor_serving()
    assert resolved.outputs == (TensorSpec("y", "FP32", (-1, 3)),) and resolved.hidden_outputs == ("z",)
    for serving, message in [
        ({"batch_axis": 1}, "serving.batch_axis must be 0 or null"),
        ({"batch_axis": None}, "it must be 1"),
        ({"max_batch_size": 0}, "serving.max_batch_size must be 1 to 4096"),
        ({"max_wait_ms": -1}, "serving.max_wait_ms must be 0 to 1000"),
        ({"hidden_outputs": ["y"]}, r"serving.hidden_outputs names \['y'\], which are outputs it returns"),
        ({"hidden_outputs": "z"}, "serving.hidden_outputs must be a list of names"),
        ({"dim_names": {"x": ["batch"]}}, r"serving.dim_names\['x'\] must name each axis"),
    ]:
        with pytest.raises(ManifestError, match=message):
            Manifest(**tensor_fields(**serving))
    with pytest.raises(ManifestError, match=r"needs serving\.max_wait_ms"):
        Manifest(**{**tensor_fields(), "serving": {"batch_axis": 0, "max_batch_size": 64}})
    static = (TensorSpec("y", "FP32", (2, 3)),)
    with pytest.raises(ManifestError, match=r"'y' has the shape \[2, 3\], whose axis 0 is not dynamic"):
        Manifest(**{**tensor_fields(), "outputs": static})
    with pytest.raises(ManifestError, match="training must record the seed"):
        Manifest(**{**tensor_fields(), "imported": None})


def test_the_unchecked_verdict_is_served_and_honest() -> None:
    manifest = Manifest(**tensor_fields())
    assert manifest.servable and manifest.gate.verdict == "unchecked"
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert Gate.evaluate((), {}).verdict == "unchecked"
    check = QualityCheck("check_mismatches", "<=", 0)
    with pytest.raises(ManifestError, match="says the version is unchecked, but it records checks"):
        Manifest(
            **{**tensor_fields(), "gate": Gate((check,), "unchecked"), "metrics": {"check_mismatches": 0}}
        )
    with pytest.raises(ManifestError, match="says the quality gate passed, but records no check"):
        Manifest(**{**tensor_fields(), "gate": Gate((), "passed")})
