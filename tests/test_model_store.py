"""The committed model store: every manifest matches its file and its graph, and meets the bar."""

from __future__ import annotations

import onnx
import pytest

from service.inference.runtime import NUMPY_DTYPES
from store_format import list_models, list_versions, load_verified
from tests.conftest import COMMITTED_STORE

MODELS = ["classifier", "forecaster", "generator"]
ONNX_TO_V2 = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.INT64: "INT64",
}


def graph_specs(values) -> list[dict]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        specs.append({"name": value.name, "datatype": ONNX_TO_V2[tensor.elem_type], "shape": shape})
    return specs


def test_the_store_holds_the_three_default_models():
    assert list_models(COMMITTED_STORE) == MODELS
    # forecaster/2 is forecaster/1's weights reading the window chosen on the validation weeks
    versions = {name: list_versions(COMMITTED_STORE, name) for name in MODELS}
    assert versions == {"classifier": [1, 2], "forecaster": [1, 2], "generator": [1]}


@pytest.mark.parametrize("name", MODELS)
def test_manifest_matches_its_file_and_its_graph(name):
    manifest, path = load_verified(COMMITTED_STORE, name)  # raises if the sha256 differs
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [s.to_dict() for s in manifest.inputs] == graph_specs(proto.graph.input)
    assert [s.to_dict() for s in manifest.outputs] == graph_specs(proto.graph.output)
    assert manifest.opset >= 17
    assert manifest.opset == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert all(spec.shape[0] == -1 for spec in (*manifest.inputs, *manifest.outputs)), "dynamic batch axis"
    assert all(spec.datatype in NUMPY_DTYPES for spec in (*manifest.inputs, *manifest.outputs))
    assert manifest.metrics["onnx_parity_max_abs_diff"] <= 1e-4
    assert {"seed", "epochs"} <= set(manifest.training)
    assert manifest.dataset


@pytest.mark.parametrize("name", MODELS)
def test_models_carry_no_source_locations(name):
    """The exporter's per-node stack traces (the training machine's file paths) are stripped."""
    _, path = load_verified(COMMITTED_STORE, name)
    proto = onnx.load(str(path))
    keys = {prop.key for node in proto.graph.node for prop in node.metadata_props}
    keys |= {
        prop.key for function in proto.functions for node in function.node for prop in node.metadata_props
    }
    assert "pkg.torch.onnx.stack_trace" not in keys
    assert b'File "/' not in path.read_bytes()


def test_classifier_meets_its_bar():
    manifest, _ = load_verified(COMMITTED_STORE, "classifier")
    assert manifest.metrics["test_accuracy"] >= 0.98
    assert manifest.labels == [str(i) for i in range(10)]
    assert manifest.input("images").shape == (-1, 1, 8, 8)
    assert manifest.output("probabilities").shape == (-1, 10)


def test_generator_meets_its_bar():
    manifest, _ = load_verified(COMMITTED_STORE, "generator")
    assert manifest.metrics["label_accuracy"] >= 0.90
    generated = manifest.metrics["intra_class_distance_generated"]
    real = manifest.metrics["intra_class_distance_real"]
    assert generated >= 0.5 * real, "same-class samples collapsed"
    assert manifest.input("latent").shape == (-1, manifest.serving["latent_dim"])
    assert manifest.output("images").shape == (-1, 1, 8, 8)


def test_forecaster_meets_its_bar():
    manifest, _ = load_verified(COMMITTED_STORE, "forecaster")
    assert manifest.metrics["test_mae"] <= 0.9 * manifest.metrics["baseline_mae"]
    assert manifest.input("history").shape == (-1, -1)
    assert manifest.input("lengths").shape == (-1,)
    assert manifest.output("forecast").shape == (-1, manifest.serving["horizon"])
    assert manifest.serving["min_length"] <= manifest.serving["max_length"]
