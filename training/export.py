"""Export a trained model to ONNX, prove ONNX Runtime agrees with PyTorch, publish it.

Nothing reaches the model store unless the graph passes ``onnx.checker`` and ONNX Runtime
matches PyTorch (max abs difference <= ``PARITY_ATOL``) at every size in ``PARITY_BATCHES``.
"""

from __future__ import annotations

import inspect
import logging
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from store_format import Gate, Manifest, QualityCheck, TensorSpec, publish

log = logging.getLogger(__name__)

OPSET = 18
PARITY_BATCHES = (1, 7, 64)
PARITY_ATOL = 1e-4

_ONNX_DATATYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
}


class ParityError(AssertionError):
    """ONNX Runtime and PyTorch disagree on the exported graph."""


@dataclass
class TrainedModel:
    """Everything a trainer hands over for export and publication.

    ``module`` takes the tensors named by ``input_names`` (in order) and returns the
    tensors named by ``output_names``; pre- and post-processing (scaling, softmax) live
    inside it so that the exported graph is the whole model.
    """

    name: str  # model store name: "classifier", "forecaster", "generator"
    task: str
    module: torch.nn.Module
    input_names: list[str]
    output_names: list[str]
    # batch size -> example inputs with that batch size, used to export and to check parity
    example_inputs: Callable[[int], tuple[torch.Tensor, ...]]
    # torch.export dynamic shapes, keyed by forward() argument name
    dynamic_shapes: dict[str, dict[int, Any]]
    metrics: dict[str, Any]
    training: dict[str, Any]  # the configuration, including "seed"
    dataset: dict[str, Any]
    labels: list[str] | None = None
    serving: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)  # plots copied beside the model
    # the bar its metrics must meet to be served; declared beside each trainer as QUALITY_BAR
    quality_bar: tuple[QualityCheck, ...] = ()


def export_onnx(model: TrainedModel, path: Path) -> onnx.ModelProto:
    """Export ``model.module`` to ``path`` (traced at batch 2) and check the graph; returns it."""
    module = model.module.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            model.example_inputs(2),
            input_names=model.input_names,
            output_names=model.output_names,
            opset_version=OPSET,
            dynamic_shapes=model.dynamic_shapes,
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
    proto = onnx.load(str(path))
    strip_source_locations(proto)
    onnx.save(proto, str(path))
    onnx.checker.check_model(proto, full_check=True)
    check_dynamic_axes(model, proto)
    return proto


# The exporter records, per node, the Python stack that produced it: absolute file paths of
# the machine that trained the model and line numbers of its source. Neither belongs in an
# artifact that is shipped, and a reformatted source file would change the model's bytes.
_SOURCE_LOCATION_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})


def strip_source_locations(proto: onnx.ModelProto) -> None:
    """Remove the exporter's per-node stack traces, in place (the graph itself is unchanged)."""
    graphs = [proto.graph, *(function for function in proto.functions)]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            kept = [prop for prop in node.metadata_props if prop.key not in _SOURCE_LOCATION_KEYS]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
            for attr in node.attribute:  # the bodies of If, Loop and Scan nodes
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)


def check_dynamic_axes(model: TrainedModel, proto: onnx.ModelProto) -> None:
    """Fail if an axis declared dynamic came out of the exporter with a fixed size.

    The exporter can silently specialise an axis (it happened to a GRU's time axis when a
    second GRU was exported in the same process); parity at the traced sizes would not notice.
    """
    arguments = list(inspect.signature(model.module.forward).parameters)
    graph_inputs = {value.name: value for value in proto.graph.input}
    for argument, input_name in zip(arguments, model.input_names, strict=False):
        dims = graph_inputs[input_name].type.tensor_type.shape.dim
        for axis in model.dynamic_shapes.get(argument, {}):
            if dims[axis].HasField("dim_value"):
                raise ParityError(
                    f"{model.name}: axis {axis} of input {input_name!r} was declared dynamic "
                    f"but was exported with the fixed size {dims[axis].dim_value}"
                )


def check_parity(model: TrainedModel, path: Path) -> float:
    """Max abs difference between ONNX Runtime and PyTorch over ``PARITY_BATCHES``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in PARITY_BATCHES:
        inputs = model.example_inputs(batch)
        with torch.no_grad():
            expected = model.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {n: t.numpy() for n, t in zip(model.input_names, inputs, strict=True)}
        actual = session.run(model.output_names, feeds)
        for name, want, got in zip(model.output_names, expected, actual, strict=True):
            if got.shape != tuple(want.shape):
                raise ParityError(
                    f"{model.name}.{name} at batch {batch}: shape {got.shape} != {tuple(want.shape)}"
                )
            diff = float(np.max(np.abs(got.astype(np.float64) - want.numpy().astype(np.float64))))
            worst = max(worst, diff)
            if diff > PARITY_ATOL:
                raise ParityError(
                    f"{model.name}.{name} at batch {batch}: max abs diff {diff:.2e} > {PARITY_ATOL}"
                )
    return worst


def tensor_specs(graph_values: Any) -> tuple[TensorSpec, ...]:
    """Manifest tensor specs read from the exported graph itself, so they cannot drift."""
    specs = []
    for value in graph_values:
        tensor_type = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
        specs.append(TensorSpec(value.name, _ONNX_DATATYPES[tensor_type.elem_type], shape))
    return tuple(specs)


def graph_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset the graph was exported with."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def export_and_publish(model: TrainedModel, store: Path, force: bool = False) -> Manifest:
    """Export, check and verify ``model``, judge it against its quality bar, then publish it.

    It is written as the next version in ``store`` whatever the verdict: a version that misses
    its bar is kept as ``rejected`` (for inspection, never served), or ``forced`` with ``force``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        proto = export_onnx(model, path)
        max_diff = check_parity(model, path)
        log.info("%s: ONNX Runtime matches PyTorch (max abs diff %.2e)", model.name, max_diff)
        metrics = {**model.metrics, "onnx_parity_max_abs_diff": max_diff}
        fields = {
            "name": model.name,
            "task": model.task,
            "inputs": tensor_specs(proto.graph.input),
            "outputs": tensor_specs(proto.graph.output),
            "opset": graph_opset(proto),
            "metrics": metrics,
            "training": model.training,
            "dataset": model.dataset,
            "labels": model.labels,
            "serving": model.serving,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "producer": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "python": platform.python_version(),
            },
            "gate": Gate.evaluate(model.quality_bar, metrics, force),
        }
        return publish(store, fields, path, extra_files=model.artifacts)
