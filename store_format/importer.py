"""Import an ONNX file a user brings into the model store, as the generic ``tensor`` task.

``python -m store_format import PATH.onnx --name NAME`` (see ``store_format/__main__.py``)
calls :func:`import_model`. It checks the file with ``onnx.checker``, reads the inputs and
outputs from the graph, loads it once in ONNX Runtime, optionally runs a check file of inputs
and expected outputs, and publishes the next version of NAME with :func:`publish`. A model
that cannot be served raises :class:`ImportRefused` naming the tensor and why, before anything
is written, so a refused import leaves the store as it was.

It needs ``onnx``, ``onnxruntime`` and NumPy, never torch; ``store_format.manifest`` stays
standard-library only, which is why this is a module of its own that nothing imports eagerly.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from store_format.manifest import (
    _NAME,
    MAX_BATCH_SIZE_LIMIT,
    MAX_WAIT_MS_LIMIT,
    MODEL_FILE,
    NUMPY_DTYPE_NAMES,
    ORT_DATATYPES,
    TENSOR_TASK,
    Gate,
    Manifest,
    ManifestError,
    QualityCheck,
    TensorServing,
    TensorSpec,
    list_versions,
    publish,
)

# The service reads its store from this variable, with this default relative to its working
# directory (service settings' model_store); an import goes to the same place unless told.
STORE_ENV = "MODELSERVE_MODEL_STORE"
DEFAULT_STORE = Path("model_store")
# The service's own default batch policy (service settings' BatchPolicy).
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-5
# protobuf cannot hold a model of 2 GiB or more in one message; such a model keeps its weights
# in external files, which the store (one self-contained model.onnx per version) cannot carry.
_PROTOBUF_LIMIT = 2**31

_DATATYPES = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}
_ZIPMAP_HINT = (
    "skl2onnx writes a classifier's probabilities this way by default (ZipMap); convert it with "
    'options={id(clf): {"zipmap": False}} (or to_onnx(clf, X, options={"zipmap": False})) to get a '
    "probabilities tensor instead"
)


class ImportRefused(Exception):
    """The file cannot be served as it is; the message names the tensor or check and why."""


@dataclass(frozen=True)
class ImportOptions:
    """What ``python -m store_format import`` was asked; None = infer or use the default."""

    name: str
    store: Path | None = None
    batch_axis: int | str | None = "auto"  # "auto": inferred; an int or None overrides
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    description: str | None = None
    check: Path | None = None
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL


@dataclass(frozen=True)
class ImportResult:
    manifest: Manifest
    version_dir: Path


def default_store() -> Path:
    """The store the service reads: ``MODELSERVE_MODEL_STORE``, else ``model_store/``."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def import_model(path: Path, options: ImportOptions, say: Callable[[str], None] = print) -> ImportResult:
    """Check ``path``, publish it as the next version of ``options.name``; raise ImportRefused.

    Nothing is written to the store unless every check passes. ``say`` reports progress.
    """
    path = Path(path)
    store = Path(options.store) if options.store is not None else default_store()
    if not _NAME.match(options.name):
        raise ImportRefused(
            f"--name {options.name!r} is not a model name: it must match {_NAME.pattern} "
            "(lowercase letters, digits, '-' and '_', starting with a letter)"
        )
    if not path.is_file():
        raise ImportRefused(f"{path} is not a file")
    with tempfile.TemporaryDirectory(prefix="store-import-") as tmp:
        # Everything below reads this private copy and publish() copies it, so the file that was
        # checked and run is the file published, even if the user's file changes meanwhile.
        staged = Path(tmp) / MODEL_FILE
        proto = _stage(path, staged, say)
        inputs, outputs, dim_names = _interface(proto, options)
        say("loading it in ONNX Runtime (CPU)")
        session = _load_session(staged)
        _check_session_agrees(session, inputs)
        serving = _serving(inputs, outputs, dim_names, proto, options)
        metrics: dict[str, Any] = {}
        gate = Gate.unchecked()
        if options.check is not None:
            say(f"running the check {options.check} (atol {options.atol:g}, rtol {options.rtol:g})")
            metrics, gate = _run_check(session, options, serving)
        fields = {
            "name": options.name,
            "task": TENSOR_TASK,
            "inputs": inputs,
            "outputs": outputs,
            "opset": _default_opset(proto),
            "metrics": metrics,
            "training": {},
            "dataset": {},
            "labels": None,
            "serving": serving.to_serving(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "producer": {
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "python": platform.python_version(),
            },
            "gate": gate,
            "imported": {
                "file": path.name,
                "producer_name": proto.producer_name,
                "producer_version": proto.producer_version,
                "graph_name": proto.graph.name,
                "ir_version": proto.ir_version,
                "opsets": {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import},
            },
        }
        try:
            # Built here, not only inside publish(), so that a manifest the format refuses is
            # refused before publish() creates the model's folder in the store.
            Manifest(
                **fields, version=max(list_versions(store, options.name), default=0) + 1, sha256="0" * 64
            )
        except ManifestError as exc:
            raise ImportRefused(str(exc)) from exc
        manifest = publish(store, fields, staged)
    return ImportResult(manifest, store / manifest.name / str(manifest.version))


# --- the file --------------------------------------------------------------------------------


def _stage(path: Path, staged: Path, say: Callable[[str], None]) -> onnx.ModelProto:
    """Copy ``path`` to ``staged`` (self-contained), check the copy fully; the graph."""
    say(f"checking {path} with onnx.checker (full check)")
    shutil.copyfile(path, staged)
    try:
        head = onnx.load(str(staged), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not ONNX at all
        raise ImportRefused(f"{path} is not an ONNX model: {_brief(exc)}") from exc
    external = sorted({_location(t) for t in _tensors(head.graph) if _is_external(t)})
    if external:
        size = path.stat().st_size + sum(
            (path.parent / name).stat().st_size for name in external if (path.parent / name).is_file()
        )
        if size >= _PROTOBUF_LIMIT:
            raise ImportRefused(
                f"{path} keeps its weights in {', '.join(external)} ({size / 2**30:.1f} GiB in all); the "
                "store holds one self-contained model.onnx per version, which protobuf limits to 2 GiB"
            )
        try:
            # Weights in external files (found beside the user's file) are folded into the one
            # file the store keeps and hashes.
            onnx.save(onnx.load(str(path)), str(staged))
        except Exception as exc:
            raise ImportRefused(f"the external weights of {path} cannot be read: {_brief(exc)}") from exc
    try:
        # Given a path, the checker reads the file itself, so no protobuf size limit applies to
        # the check; it runs on the copy, which is the file that will be published.
        onnx.checker.check_model(str(staged), full_check=True)
    except Exception as exc:
        raise ImportRefused(f"onnx.checker refuses {path}: {_brief(exc)}") from exc
    return onnx.load(str(staged), load_external_data=False)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: initializers and constant attributes, subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for subgraph in attr.graphs:
                yield from _tensors(subgraph)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _location(tensor: onnx.TensorProto) -> str:
    return next((entry.value for entry in tensor.external_data if entry.key == "location"), "?")


def _load_session(staged: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ImportRefused(f"ONNX Runtime cannot load the model: {_brief(exc)}") from exc


def _default_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset, 0 for a graph that uses only other domains."""
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 0)


def _brief(exc: Exception) -> str:
    """An exception's message on one line; a long one (a C++ stack, a dump) cut to its first line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if len(text) > 400 else " ".join(text.split())


# --- inputs and outputs ----------------------------------------------------------------------


def _interface(
    proto: onnx.ModelProto, options: ImportOptions
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], dict[str, tuple[str | None, ...]]]:
    """The inputs clients feed and the outputs returned, as manifest specs, and their axis names.

    Non-tensor values among the inputs and the exposed outputs are refused, and so are
    datatypes V2 cannot carry; an output the user leaves out with ``--outputs`` may be anything.
    """
    graph = proto.graph
    initializers = {tensor.name for tensor in graph.initializer}
    # Graphs of IR version < 4 list their weights as inputs too; those have values and are not fed.
    graph_inputs = [value for value in graph.input if value.name not in initializers]
    graph_outputs = list(graph.output)
    input_order = _chosen("input", options.inputs, [v.name for v in graph_inputs], every=True)
    output_order = _chosen("output", options.outputs, [v.name for v in graph_outputs], every=False)
    by_name = {value.name: value for value in (*graph_inputs, *graph_outputs)}
    inferred: dict[str, onnx.ValueInfoProto] | None = None
    specs: dict[str, TensorSpec] = {}
    dim_names: dict[str, tuple[str | None, ...]] = {}
    for kind, names in (("input", input_order), ("output", [v.name for v in graph_outputs])):
        for name in names:
            if kind == "output" and name not in output_order:
                continue  # left out with --outputs: never returned, so it may be anything
            value = by_name[name]
            datatype = _datatype(kind, value)
            if not value.type.tensor_type.HasField("shape"):
                # Exporters sometimes leave an output's shape out; ONNX shape inference can
                # usually recover it from the graph.
                if inferred is None:
                    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.output}
                value = inferred.get(name, value)
            shape, names_of_axes = _shape(kind, value)
            specs[name] = TensorSpec(name, datatype, shape)
            if any(axis is not None for axis in names_of_axes):
                dim_names[name] = names_of_axes
    inputs = tuple(specs[name] for name in input_order)
    # The manifest lists the outputs that are returned, in the order --outputs gives them; the
    # graph's others (which may be anything, a sequence of maps included) are named in
    # serving.hidden_outputs.
    outputs = tuple(specs[name] for name in output_order)
    return inputs, outputs, dim_names


def _chosen(kind: str, chosen: Sequence[str] | None, present: list[str], every: bool) -> list[str]:
    if chosen is None:
        return present
    unknown = [name for name in chosen if name not in present]
    if unknown:
        raise ImportRefused(
            f"--{kind}s names {unknown}, which the graph does not have; its {kind}s are {present}"
        )
    if len(set(chosen)) != len(chosen):
        raise ImportRefused(f"--{kind}s names a tensor twice: {list(chosen)}")
    if not chosen:
        raise ImportRefused(f"--{kind}s must name at least one {kind}")
    left_out = [name for name in present if name not in chosen]
    if every and left_out:
        raise ImportRefused(
            f"--{kind}s leaves out {left_out}, but every input of the graph must be fed (it has no "
            "value for them otherwise); list all of them"
        )
    return list(chosen)


def _datatype(kind: str, value: onnx.ValueInfoProto) -> str:
    """The V2 datatype of ``value``; raise ImportRefused if it has none."""
    which = value.type.WhichOneof("value")
    if which != "tensor_type":
        described = _describe_type(value.type)
        hint = (
            _ZIPMAP_HINT
            if which == "sequence_type"
            and value.type.sequence_type.elem_type.WhichOneof("value") == "map_type"
            else "Change the graph to give a tensor"
        )
        leave_out = (
            "; or leave it out with --outputs (naming the outputs to return)" if kind == "output" else ""
        )
        raise ImportRefused(
            f"{kind} {value.name!r} is a {described}, not a tensor: the Open Inference Protocol carries "
            f"tensors only. {hint}{leave_out}"
        )
    elem_type = value.type.tensor_type.elem_type
    if elem_type not in _DATATYPES:
        type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
        raise ImportRefused(
            f"{kind} {value.name!r} has the datatype {type_name}, which the Open Inference Protocol cannot "
            f"carry (it carries {', '.join(sorted(set(_DATATYPES.values())))}); cast it to one of those "
            "in the graph"
        )
    return _DATATYPES[elem_type]


def _describe_type(type_proto: onnx.TypeProto) -> str:
    """What a non-tensor value is, in words and in ONNX Runtime's notation."""
    which = type_proto.WhichOneof("value")
    words = {
        "sequence_type": "sequence",
        "map_type": "map",
        "optional_type": "optional value",
        "sparse_tensor_type": "sparse tensor",
    }.get(which, "value of unknown type")
    if which == "sequence_type" and type_proto.sequence_type.elem_type.WhichOneof("value") == "map_type":
        words = "sequence of maps"
    return f"{words} ({_notation(type_proto)})"


def _notation(type_proto: onnx.TypeProto) -> str:
    which = type_proto.WhichOneof("value")
    if which == "tensor_type":
        return f"tensor({_elem_name(type_proto.tensor_type.elem_type)})"
    if which == "sparse_tensor_type":
        return f"sparse_tensor({_elem_name(type_proto.sparse_tensor_type.elem_type)})"
    if which == "sequence_type":
        return f"seq({_notation(type_proto.sequence_type.elem_type)})"
    if which == "optional_type":
        return f"optional({_notation(type_proto.optional_type.elem_type)})"
    if which == "map_type":
        key = _elem_name(type_proto.map_type.key_type)
        return f"map({key},{_notation(type_proto.map_type.value_type)})"
    return "?"


def _elem_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "undefined"


def _shape(kind: str, value: onnx.ValueInfoProto) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise ImportRefused(
            f"{kind} {value.name!r} has no shape in the graph (not even a rank), and shape inference "
            "cannot find one; export the model with its output shapes declared"
        )
    shape, names = [], []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            if dim.dim_value < 1:
                raise ImportRefused(
                    f"{kind} {value.name!r} has the static size {dim.dim_value} on axis {axis}; "
                    "an empty tensor cannot be served"
                )
            shape.append(dim.dim_value)
            names.append(None)
        else:
            shape.append(-1)
            names.append(dim.dim_param or None)
    return tuple(shape), tuple(names)


def _check_session_agrees(session: ort.InferenceSession, inputs: tuple[TensorSpec, ...]) -> None:
    """ONNX Runtime must see the inputs the graph declares (it decides what must be fed)."""
    fed = {arg.name: arg for arg in session.get_inputs()}
    declared = {spec.name for spec in inputs}
    if set(fed) != declared:
        raise ImportRefused(
            f"ONNX Runtime's inputs {sorted(fed)} differ from the graph's inputs without a value "
            f"{sorted(declared)}"
        )
    for spec in inputs:
        if ORT_DATATYPES.get(fed[spec.name].type) != spec.datatype:
            raise ImportRefused(
                f"input {spec.name!r}: ONNX Runtime takes {fed[spec.name].type}, "
                f"the graph declares {spec.datatype}"
            )


# --- batching --------------------------------------------------------------------------------


def _serving(
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    dim_names: dict[str, tuple[str | None, ...]],
    proto: onnx.ModelProto,
    options: ImportOptions,
) -> TensorServing:
    tensors = (*inputs, *outputs)
    returned = {spec.name for spec in outputs}
    hidden = tuple(value.name for value in proto.graph.output if value.name not in returned)
    if options.batch_axis == "auto":
        batch_axis, reason = _infer_batch_axis(tensors, dim_names)
    elif options.batch_axis is None:
        batch_axis, reason = None, "set with --batch-axis none"
    else:
        batch_axis, reason = _checked_batch_axis(options.batch_axis, tensors), "set with --batch-axis 0"
    if batch_axis is None:
        if options.max_batch_size not in (None, 1):
            raise ImportRefused(
                f"--max-batch {options.max_batch_size} needs a batch axis, and the model has none "
                f"({reason}); each request is run on its own. Pass --batch-axis 0 if axis 0 of every "
                "input and output is the batch"
            )
        if options.max_wait_ms not in (None, 0):
            raise ImportRefused(
                f"--max-wait-ms {options.max_wait_ms:g} needs a batch axis, and the model has none ({reason})"
            )
        max_batch_size, max_wait_ms = 1, 0.0
    else:
        max_batch_size = (
            options.max_batch_size if options.max_batch_size is not None else DEFAULT_MAX_BATCH_SIZE
        )
        max_wait_ms = options.max_wait_ms if options.max_wait_ms is not None else DEFAULT_MAX_WAIT_MS
        if not 1 <= max_batch_size <= MAX_BATCH_SIZE_LIMIT:
            raise ImportRefused(f"--max-batch must be 1 to {MAX_BATCH_SIZE_LIMIT}, got {max_batch_size}")
        if not 0 <= max_wait_ms <= MAX_WAIT_MS_LIMIT:
            raise ImportRefused(f"--max-wait-ms must be 0 to {MAX_WAIT_MS_LIMIT:g}, got {max_wait_ms:g}")
    description = options.description if options.description is not None else proto.doc_string.strip()
    return TensorServing(
        batch_axis=batch_axis,
        max_batch_size=max_batch_size,
        max_wait_ms=float(max_wait_ms),
        inputs=inputs,
        outputs=outputs,
        hidden_outputs=hidden,
        dim_names=dim_names,
        batch_axis_reason=reason,
        description=description,
    )


def _infer_batch_axis(
    tensors: tuple[TensorSpec, ...], dim_names: dict[str, tuple[str | None, ...]]
) -> tuple[int | None, str]:
    """Axis 0 when every input and returned output has the same dynamic first axis; else None.

    "The same": one symbolic name on all of them, or no name on any. A first axis named on
    one tensor and unnamed (or named otherwise) on another may be different sizes, so it is
    not taken for a batch axis without ``--batch-axis 0``.
    """
    for spec in tensors:
        if not spec.shape:
            return None, f"{spec.name!r} has rank 0, so there is no axis to batch along"
        if spec.shape[0] != -1:
            return None, f"axis 0 of {spec.name!r} has the static size {spec.shape[0]}"
    first = {spec.name: dim_names.get(spec.name, (None,))[0] for spec in tensors}
    names = set(first.values())
    if len(names) > 1:
        listed = ", ".join(f"{name!r}: {axis or 'unnamed'}" for name, axis in first.items())
        return None, f"the first axes are not one axis ({listed}); --batch-axis 0 says they are"
    (name,) = names
    if name is None:
        return 0, "inferred: axis 0 of every input and output is dynamic (unnamed)"
    return 0, f"inferred: axis 0 of every input and output is the dynamic axis {name!r}"


def _checked_batch_axis(axis: int, tensors: tuple[TensorSpec, ...]) -> int:
    if axis != 0:
        raise ImportRefused(
            f"--batch-axis {axis}: requests are batched along axis 0 only (as Triton does); a model "
            "whose batch axis is elsewhere is served one request at a time: pass --batch-axis none"
        )
    for spec in tensors:
        if not spec.shape or spec.shape[0] != -1:
            raise ImportRefused(
                f"--batch-axis 0: {spec.name!r} has the shape {list(spec.shape)}, whose axis 0 is not "
                "dynamic, so requests cannot be concatenated along it; pass --batch-axis none"
            )
    return 0


# --- the quality check -----------------------------------------------------------------------


def _run_check(
    session: ort.InferenceSession, options: ImportOptions, serving: TensorServing
) -> tuple[dict[str, Any], Gate]:
    """Run the check file's inputs; the gate passes only if every expected output matches.

    A mismatch refuses the import rather than publishing a rejected version: the user is at
    the keyboard with a model that disagrees with their own expectations.
    """
    check = Path(options.check)
    try:
        with np.load(check, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise ImportRefused(f"--check {check} is not a readable .npz file: {_brief(exc)}") from exc
    input_specs = {spec.name: spec for spec in serving.inputs}
    output_specs = {spec.name: spec for spec in serving.outputs}
    unknown = sorted(set(arrays) - set(input_specs) - set(output_specs))
    if unknown:
        raise ImportRefused(
            f"--check {check} holds {unknown}, which are neither inputs {sorted(input_specs)} nor "
            f"returned outputs {sorted(output_specs)}"
        )
    missing = sorted(set(input_specs) - set(arrays))
    if missing:
        raise ImportRefused(f"--check {check} has no array for the inputs {missing}")
    expected = {name: arrays[name] for name in output_specs if name in arrays}
    if not expected:
        raise ImportRefused(f"--check {check} has no expected output; name one of {sorted(output_specs)}")
    feeds = {name: _feed(check, input_specs[name], arrays[name]) for name in input_specs}
    try:
        got = dict(zip(expected, session.run(list(expected), feeds), strict=True))
    except Exception as exc:
        raise ImportRefused(f"--check {check}: ONNX Runtime fails on its inputs: {_brief(exc)}") from exc
    mismatches, elements, worst = 0, 0, 0.0
    reports = []
    for name, want in expected.items():
        actual = got[name]
        if actual.shape != want.shape:
            raise ImportRefused(
                f"--check {check}: output {name!r} has the shape {list(actual.shape)}, the check expects "
                f"{list(want.shape)}"
            )
        missed, diff = _compare(actual, want, options.atol, options.rtol)
        mismatches, elements, worst = mismatches + missed, elements + want.size, max(worst, diff)
        if missed:
            reports.append(
                f"output {name!r}: {missed} of {want.size} values differ (max abs diff {diff:.3g})"
            )
    if mismatches:
        raise ImportRefused(
            f"--check {check} fails: {'; '.join(reports)}, beyond atol {options.atol:g} + rtol "
            f"{options.rtol:g} x |expected|; nothing was published"
        )
    metrics = {
        "check_file": check.name,
        "check_outputs": sorted(expected),
        "check_values": elements,
        "check_mismatches": mismatches,
        "check_max_abs_diff": worst,
        "check_atol": options.atol,
        "check_rtol": options.rtol,
    }
    bar = QualityCheck(
        "check_mismatches",
        "<=",
        0.0,
        f"every value of the outputs in {check.name} within atol {options.atol:g} + rtol "
        f"{options.rtol:g} x |expected| (exactly equal for integers, booleans and strings)",
    )
    return metrics, Gate.evaluate((bar,), metrics)


def _feed(check: Path, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    if spec.datatype == "BYTES":
        if array.dtype.kind not in "US":
            raise ImportRefused(
                f"--check {check}: input {spec.name!r} is BYTES, the check holds {array.dtype}"
            )
        array = array.astype(str).astype(object) if array.dtype.kind == "S" else array.astype(object)
    elif array.dtype != np.dtype(NUMPY_DTYPE_NAMES[spec.datatype]):
        raise ImportRefused(
            f"--check {check}: input {spec.name!r} is {spec.datatype} "
            f"({NUMPY_DTYPE_NAMES[spec.datatype]}), the check holds {array.dtype}"
        )
    fits = len(array.shape) == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
    )
    if not fits:
        raise ImportRefused(
            f"--check {check}: input {spec.name!r} has the shape {list(array.shape)}, the model takes "
            f"{list(spec.shape)} (-1: any size)"
        )
    return array


def _compare(actual: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> tuple[int, float]:
    """How many values differ beyond the tolerance, and the largest absolute difference."""
    if actual.dtype.kind in "fc" or want.dtype.kind in "fc":
        actual64, want64 = actual.astype(np.float64), want.astype(np.float64)
        close = np.isclose(actual64, want64, atol=atol, rtol=rtol, equal_nan=True)
        finite = np.isfinite(actual64) & np.isfinite(want64)
        diff = float(np.max(np.abs(actual64 - want64)[finite], initial=0.0))
        return int(close.size - np.count_nonzero(close)), diff
    if want.dtype.kind in "USO":
        same = actual.astype(str) == want.astype(str)
        return int(same.size - np.count_nonzero(same)), 0.0  # strings have no distance
    same = actual == want
    diff = float(np.max(np.abs(actual.astype(np.float64) - want.astype(np.float64)), initial=0.0))
    return int(same.size - np.count_nonzero(same)), diff


# --- the report ------------------------------------------------------------------------------


def describe(result: ImportResult) -> str:
    """What was published, for people: path, version, tensors, batching, verdict."""
    manifest = result.manifest
    serving = manifest.tensor_serving()
    width = max(len(spec.name) for spec in (*manifest.inputs, *manifest.outputs))
    lines = [
        f"published {manifest.name} version {manifest.version} to {result.version_dir}",
        f"  file        {result.version_dir / MODEL_FILE} (sha256 {manifest.sha256})",
        f"  task        {manifest.task} (opset {manifest.opset})",
    ]
    for kind, specs in (("inputs", manifest.inputs), ("outputs", manifest.outputs)):
        lines.append(f"  {kind}")
        for spec in specs:
            names = serving.dim_names.get(spec.name)
            axes = f"  axes: {', '.join(axis or '-' for axis in names)}" if names else ""
            lines.append(f"    {spec.name:<{width}}  {spec.datatype:<6} {list(spec.shape)}{axes}")
    if serving.hidden_outputs:
        lines.append(f"  not returned (left out by --outputs): {', '.join(serving.hidden_outputs)}")
    if serving.batched:
        lines.append(
            f"  batching    along axis {serving.batch_axis}, up to {serving.max_batch_size} per run, "
            f"waiting up to {serving.max_wait_ms:g} ms ({serving.batch_axis_reason})"
        )
    else:
        lines.append(f"  batching    none: one request per run ({serving.batch_axis_reason})")
    gate = manifest.gate
    if gate is not None and gate.checked:
        lines.append(f"  verdict     {gate.verdict}: {gate.checks[0].describe(manifest.metrics)}")
    else:
        lines.append("  verdict     unchecked: no --check given; served, and its metadata says so")
    if serving.description:
        lines.append(f"  description {serving.description}")
    return "\n".join(lines)
