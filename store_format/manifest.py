"""The model store's on-disk format: the one place that defines it.

A model store is a folder of versioned model artifacts::

    <store>/<name>/<version>/model.onnx
    <store>/<name>/<version>/manifest.json

``training`` writes versions with :func:`publish`, and so does ``python -m store_format
import`` (:mod:`store_format.importer`) for an ONNX file a user brings; ``service`` reads them
with :func:`load_verified`. Neither knows the other: this module (plain Python and the
standard library, no torch, no ONNX Runtime) is their whole interface, and
``docs/model-store.md`` describes the same format for people.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

# Open Inference Protocol (KServe V2) datatype names; the manifest uses no other spelling.
DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    }
)
# The same datatypes as ONNX Runtime names them (NodeArg.type), and as NumPy does.
ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
NUMPY_DTYPE_NAMES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",  # ONNX Runtime takes and gives strings as object arrays of str
}
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# The numeric precision of a graph's weights and arithmetic; its inputs and outputs stay FP32 either way.
PRECISIONS = ("fp32", "fp16")


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not describe its model file."""


class IntegrityError(ManifestError):
    """``model.onnx`` does not match the sha256 its manifest records."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output tensor of a model graph."""

    name: str
    datatype: str  # Open Inference Protocol spelling: "FP32", "INT64", ...
    shape: tuple[int, ...]  # -1 marks a dynamic axis (the batch axis is always dynamic)

    def __post_init__(self) -> None:
        if not self.name:
            raise ManifestError("tensor name must be non-empty")
        if self.datatype not in DATATYPES:
            raise ManifestError(
                f"tensor {self.name!r}: datatype {self.datatype!r} is not one of {sorted(DATATYPES)}"
            )
        shape = tuple(int(d) for d in self.shape)
        if any(d < -1 or d == 0 for d in shape):
            raise ManifestError(f"tensor {self.name!r}: shape {shape} has a dimension < -1 or 0")
        object.__setattr__(self, "shape", shape)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        try:
            return cls(name=data["name"], datatype=data["datatype"], shape=tuple(data["shape"]))
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"tensor spec {data!r} needs name, datatype and shape") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


# --- the quality gate ----------------------------------------------------------------------

Verdict = Literal["passed", "rejected", "forced", "unchecked"]
VERDICTS = ("passed", "rejected", "forced", "unchecked")
_COMPARISONS = {">=": lambda value, bound: value >= bound, "<=": lambda value, bound: value <= bound}


@dataclass(frozen=True)
class QualityCheck:
    """One bar a model version must meet: ``metrics[metric] <op> threshold``."""

    metric: str  # a key of Manifest.metrics, e.g. "test_accuracy"
    op: Literal[">=", "<="]
    threshold: float
    why: str = ""  # what the bar stands for, for people reading the manifest

    def __post_init__(self) -> None:
        if self.op not in _COMPARISONS:
            raise ManifestError(f"quality check on {self.metric!r}: op must be '>=' or '<=', got {self.op!r}")

    def passes(self, metrics: dict[str, Any]) -> bool:
        value = metrics.get(self.metric)
        if not isinstance(value, int | float) or isinstance(value, bool) or value != value:  # NaN
            return False
        return _COMPARISONS[self.op](value, self.threshold)

    def describe(self, metrics: dict[str, Any]) -> str:
        value = metrics.get(self.metric, "missing")
        mark = "ok" if self.passes(metrics) else "MISSED"
        return f"{self.metric} = {value} (bar {self.op} {self.threshold}): {mark}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityCheck:
        try:
            return cls(data["metric"], data["op"], float(data["threshold"]), data.get("why", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"quality check {data!r} needs metric, op and a numeric threshold") from exc


@dataclass(frozen=True)
class Gate:
    """A version's quality verdict, decided when it was trained or imported, recorded in its manifest.

    ``passed``: every check was met (there is at least one). ``rejected`` versions stay in the
    store for inspection but are never served; ``forced`` ones missed a bar and were published
    anyway on purpose (``--force``). ``unchecked``: nothing was checked (an imported model given
    no ``--check``); it is served, and says so, since no verdict can claim more than was checked.
    """

    checks: tuple[QualityCheck, ...]
    verdict: Verdict

    @classmethod
    def evaluate(cls, checks: tuple[QualityCheck, ...], metrics: dict[str, Any], force: bool = False) -> Gate:
        if not checks:
            return cls.unchecked()
        if all(check.passes(metrics) for check in checks):
            return cls(tuple(checks), "passed")
        return cls(tuple(checks), "forced" if force else "rejected")

    @classmethod
    def unchecked(cls) -> Gate:
        return cls((), "unchecked")

    @property
    def servable(self) -> bool:
        return self.verdict != "rejected"

    @property
    def checked(self) -> bool:
        """False when no check stands behind the verdict (``unchecked``)."""
        return self.verdict != "unchecked"

    def missed(self, metrics: dict[str, Any]) -> list[QualityCheck]:
        return [check for check in self.checks if not check.passes(metrics)]

    def check_consistent(self, metrics: dict[str, Any], model: str) -> None:
        """Refuse a verdict its own checks contradict (a hand-edited manifest)."""
        if self.verdict == "passed" and not self.checks:
            raise ManifestError(f"{model}: the manifest says the quality gate passed, but records no check")
        if self.verdict == "unchecked" and self.checks:
            raise ManifestError(
                f"{model}: the manifest says the version is unchecked, but it records checks; "
                "their verdict is passed, rejected or forced"
            )
        if self.verdict == "passed" and self.missed(metrics):
            missed = "; ".join(check.describe(metrics) for check in self.missed(metrics))
            raise ManifestError(f"{model}: the manifest says the quality gate passed, but {missed}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gate:
        verdict = data.get("verdict")
        if verdict not in VERDICTS:
            raise ManifestError(
                f"gate verdict must be passed, rejected or forced, or unchecked where nothing was checked; "
                f"got {verdict!r}"
            )
        return cls(tuple(QualityCheck.from_dict(c) for c in data.get("checks", [])), verdict)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "checks": [asdict(check) for check in self.checks]}


# serving hints that are history lengths, in the order they must be in when present:
# shortest accepted <= weeks the model reads <= longest the graph is meant to be fed
HISTORY_LENGTH_KEYS = ("min_length", "window", "max_length")


def check_history_lengths(serving: dict[str, Any], name: str) -> None:
    """Refuse ``serving`` length hints that are not positive integers in ascending order."""
    present = [(key, serving[key]) for key in HISTORY_LENGTH_KEYS if key in serving]
    for key, value in present:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ManifestError(f"{name}: serving.{key} must be a positive integer, got {value!r}")
    for (key_a, a), (key_b, b) in itertools.pairwise(present):
        if a > b:
            raise ManifestError(f"{name}: serving.{key_a} ({a}) is more than serving.{key_b} ({b})")


# --- the generic tensor task ----------------------------------------------------------------

# The task of a model imported with ``python -m store_format import``: V2 tensors in, V2 tensors
# out, no pre- or post-processing, served as its ``serving`` block (a TensorServing) says.
TENSOR_TASK = "tensor"
# The limits of the service's own batch policy (service settings' BatchPolicy).
MAX_BATCH_SIZE_LIMIT = 4096
MAX_WAIT_MS_LIMIT = 1000.0


@dataclass(frozen=True)
class TensorServing:
    """How a ``tensor`` model is served: its manifest's ``serving`` block, checked and resolved.

    Every input in the manifest must be fed, and its outputs are the ones returned (and run);
    ``hidden_outputs`` names the graph's other outputs, left out at import (``--outputs``) and
    never asked of ONNX Runtime (which may still compute them on the way), so that a check of
    the graph against the manifest can account for them.
    ``batch_axis`` 0: requests are concatenated along axis 0, up to ``max_batch_size`` items
    (rows of axis 0) per run, waiting up to ``max_wait_ms`` for batch mates; only requests whose
    other dimensions all match may share a run. ``None``: each request is one run on its own
    (Triton's ``max_batch_size: 0``), and ``max_batch_size`` is 1.
    """

    batch_axis: int | None
    max_batch_size: int
    max_wait_ms: float
    inputs: tuple[TensorSpec, ...]  # the manifest's inputs: all of them are fed
    outputs: tuple[TensorSpec, ...]  # the manifest's outputs: the ones returned
    hidden_outputs: tuple[str, ...] = ()  # outputs of the graph that are not returned
    # Symbolic names of dynamic axes as the graph declares them ("batch", "height"), None for
    # an axis that is static or unnamed; only tensors with at least one name are listed.
    dim_names: dict[str, tuple[str | None, ...]] = field(default_factory=dict)
    batch_axis_reason: str = ""  # how batch_axis was decided, for people
    description: str = ""

    @property
    def batched(self) -> bool:
        return self.batch_axis is not None

    @classmethod
    def from_serving(
        cls,
        serving: dict[str, Any],
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        model: str,
    ) -> TensorServing:
        """Check a ``tensor`` manifest's ``serving`` block against its tensors; raise ManifestError."""
        required = ("batch_axis", "max_batch_size", "max_wait_ms")
        missing = [key for key in required if key not in serving]
        if missing:
            raise ManifestError(f"{model}: task {TENSOR_TASK!r} needs serving.{', serving.'.join(missing)}")
        batch_axis, max_batch_size, max_wait_ms = (
            serving["batch_axis"],
            serving["max_batch_size"],
            serving["max_wait_ms"],
        )
        if batch_axis not in (0, None) or isinstance(batch_axis, bool):
            raise ManifestError(
                f"{model}: serving.batch_axis must be 0 or null (requests are batched along axis 0 only), "
                f"got {batch_axis!r}"
            )
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
            raise ManifestError(f"{model}: serving.max_batch_size must be an integer, got {max_batch_size!r}")
        if not 1 <= max_batch_size <= MAX_BATCH_SIZE_LIMIT:
            raise ManifestError(
                f"{model}: serving.max_batch_size must be 1 to {MAX_BATCH_SIZE_LIMIT}, got {max_batch_size}"
            )
        if batch_axis is None and max_batch_size != 1:
            raise ManifestError(
                f"{model}: serving.max_batch_size is {max_batch_size}, but serving.batch_axis is null "
                "(each request runs on its own): it must be 1"
            )
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, int | float):
            raise ManifestError(f"{model}: serving.max_wait_ms must be a number, got {max_wait_ms!r}")
        if not 0 <= max_wait_ms <= MAX_WAIT_MS_LIMIT:
            raise ManifestError(
                f"{model}: serving.max_wait_ms must be 0 to {MAX_WAIT_MS_LIMIT:g}, got {max_wait_ms}"
            )
        hidden = serving.get("hidden_outputs", [])
        if not isinstance(hidden, list | tuple) or not all(isinstance(name, str) for name in hidden):
            raise ManifestError(f"{model}: serving.hidden_outputs must be a list of names, got {hidden!r}")
        returned = sorted({spec.name for spec in outputs} & set(hidden))
        if returned:
            raise ManifestError(
                f"{model}: serving.hidden_outputs names {returned}, which are outputs it returns"
            )
        if batch_axis is not None:
            for spec in (*inputs, *outputs):
                if not spec.shape or spec.shape[batch_axis] != -1:
                    raise ManifestError(
                        f"{model}: serving.batch_axis is {batch_axis}, but {spec.name!r} has the shape "
                        f"{list(spec.shape)}, whose axis {batch_axis} is not dynamic"
                    )
        dim_names = serving.get("dim_names", {})
        if not isinstance(dim_names, dict):
            raise ManifestError(
                f"{model}: serving.dim_names must map tensor names to lists, got {dim_names!r}"
            )
        ranks = {spec.name: len(spec.shape) for spec in (*inputs, *outputs)}
        for name, dims in dim_names.items():
            if name not in ranks or not isinstance(dims, list | tuple) or len(dims) != ranks[name]:
                raise ManifestError(
                    f"{model}: serving.dim_names[{name!r}] must name each axis of a tensor of the model"
                )
            if any(dim is not None and not isinstance(dim, str) for dim in dims):
                raise ManifestError(f"{model}: serving.dim_names[{name!r}] holds a name that is not a string")
        return cls(
            batch_axis=batch_axis,
            max_batch_size=max_batch_size,
            max_wait_ms=float(max_wait_ms),
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            hidden_outputs=tuple(hidden),
            dim_names={name: tuple(dims) for name, dims in dim_names.items()},
            batch_axis_reason=str(serving.get("batch_axis_reason", "")),
            description=str(serving.get("description", "")),
        )

    def to_serving(self) -> dict[str, Any]:
        """The ``serving`` block that :meth:`from_serving` reads back."""
        return {
            "batch_axis": self.batch_axis,
            "batch_axis_reason": self.batch_axis_reason,
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "hidden_outputs": list(self.hidden_outputs),
            "dim_names": {name: list(dims) for name, dims in self.dim_names.items()},
            "description": self.description,
        }


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` records about one model version."""

    name: str  # model name, e.g. "classifier"; also the folder name
    version: int  # positive integer; also the folder name
    task: str  # what the model does, e.g. "image-classification"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sha256: str  # hex digest of model.onnx
    opset: int  # ONNX default-domain opset of the graph
    metrics: dict[str, Any]  # held-out evaluation, e.g. {"test_accuracy": 0.99}
    training: dict[str, Any]  # the training configuration, including "seed"
    dataset: dict[str, Any]  # where the data came from and how it was split
    labels: list[str] | None = None  # class names, index-aligned with the output, if any
    # Facts a server needs that the tensor shapes do not carry (value ranges, minimum
    # history length, the forecaster's ``window``: how many of the most recent weeks it
    # reads, ...). Keys are documented per model in docs/model-store.md; the history-length
    # keys are checked by ``check_history_lengths``.
    serving: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""  # ISO 8601, UTC
    producer: dict[str, Any] = field(default_factory=dict)  # library versions that built it
    # The quality verdict; None for versions published before gates existed, which are served.
    gate: Gate | None = None
    # "fp32", or "fp16" for a variant converted from an fp32 version (manifests older than this
    # field are fp32); derived_from names that fp32 version.
    precision: str = "fp32"
    derived_from: int | None = None
    # Where an imported model came from (python -m store_format import): its file name, the
    # graph's producer and opsets. None for a model trained by training/, which records its
    # seed, configuration and data in training and dataset instead.
    imported: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ManifestError(f"model name {self.name!r} must match {_NAME.pattern}")
        if not isinstance(self.version, int) or self.version < 1:
            raise ManifestError(f"{self.name}: version must be a positive integer, got {self.version!r}")
        if not self.inputs or not self.outputs:
            raise ManifestError(f"{self.name}: a model needs at least one input and one output")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ManifestError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        if self.imported is None and "seed" not in self.training:
            raise ManifestError(f"{self.name}: training must record the seed")
        if self.gate is not None:
            self.gate.check_consistent(self.metrics, self.name)
        check_history_lengths(self.serving, self.name)
        if self.task == TENSOR_TASK:
            TensorServing.from_serving(self.serving, self.inputs, self.outputs, self.name)
        if self.precision not in PRECISIONS:
            raise ManifestError(f"{self.name}: precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.derived_from is not None and (
            not isinstance(self.derived_from, int) or not 1 <= self.derived_from < self.version
        ):
            raise ManifestError(
                f"{self.name}: derived_from must be an earlier version, got {self.derived_from!r}"
            )

    @property
    def servable(self) -> bool:
        """False for a rejected candidate: kept in the store, never served."""
        return self.gate is None or self.gate.servable

    def tensor_serving(self) -> TensorServing:
        """How a ``tensor`` model is served (batch axis, limits, outputs left out)."""
        if self.task != TENSOR_TASK:
            raise ManifestError(f"{self.name}: task {self.task!r} has no tensor serving block")
        return TensorServing.from_serving(self.serving, self.inputs, self.outputs, self.name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ManifestError(f"unsupported manifest format_version {data.get('format_version')!r}")
        try:
            return cls(
                name=data["name"],
                version=data["version"],
                task=data["task"],
                inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
                sha256=data["sha256"],
                opset=int(data["opset"]),
                metrics=dict(data["metrics"]),
                training=dict(data["training"]),
                dataset=dict(data["dataset"]),
                labels=data.get("labels"),
                serving=dict(data.get("serving", {})),
                created_at=data.get("created_at", ""),
                producer=dict(data.get("producer", {})),
                gate=Gate.from_dict(data["gate"]) if data.get("gate") is not None else None,
                precision=data.get("precision", "fp32"),
                derived_from=data.get("derived_from"),
                imported=data.get("imported"),
            )
        except KeyError as exc:
            raise ManifestError(f"manifest is missing the field {exc.args[0]!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [t.to_dict() for t in self.inputs]
        data["outputs"] = [t.to_dict() for t in self.outputs]
        data["gate"] = self.gate.to_dict() if self.gate is not None else None
        return data

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)


def _by_name(specs: tuple[TensorSpec, ...], name: str, model: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"{model} has no tensor {name!r}; it has {[s.name for s in specs]}")


# --- reading -----------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(version_dir: Path) -> Manifest:
    """Parse ``<version_dir>/manifest.json`` and check it names its own folder."""
    path = Path(version_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    manifest = Manifest.from_dict(data)
    version_dir = Path(version_dir)
    if (manifest.name, str(manifest.version)) != (version_dir.parent.name, version_dir.name):
        raise ManifestError(
            f"{path} describes {manifest.name}/{manifest.version}, "
            f"but lives in {version_dir.parent.name}/{version_dir.name}"
        )
    return manifest


def verify(version_dir: Path, manifest: Manifest) -> None:
    """Raise :class:`IntegrityError` unless ``model.onnx`` has the recorded sha256."""
    model_path = Path(version_dir) / MODEL_FILE
    if not model_path.is_file():
        raise IntegrityError(f"{model_path} does not exist")
    actual = sha256_of(model_path)
    if actual != manifest.sha256:
        raise IntegrityError(
            f"{model_path} has sha256 {actual[:12]}…, but its manifest records "
            f"{manifest.sha256[:12]}…: the file was changed after it was published"
        )


def load_verified(store: Path, name: str, version: int | None = None) -> tuple[Manifest, Path]:
    """The manifest and model path of ``name`` (its highest version unless given), verified."""
    if version is None:
        version = latest_version(store, name)
    version_dir = Path(store) / name / str(version)
    if not version_dir.is_dir():
        raise ManifestError(
            f"{name} has no version {version} in {store} (it has {list_versions(store, name)})"
        )
    manifest = read_manifest(version_dir)
    verify(version_dir, manifest)
    return manifest, version_dir / MODEL_FILE


def list_models(store: Path) -> list[str]:
    """Names of the models in ``store`` that have at least one version."""
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if p.is_dir() and list_versions(store, p.name))


def list_versions(store: Path, name: str) -> list[int]:
    model_dir = Path(store) / name
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and int(p.name) > 0 and (p / MANIFEST_FILE).is_file()
    )


def latest_version(store: Path, name: str, precision: str = "fp32") -> int:
    """The highest servable version of ``name`` in ``precision``; rejected candidates are passed over."""
    versions = list_versions(store, name)
    if not versions:
        raise ManifestError(f"no versions of {name!r} in {store}")
    for version in reversed(versions):
        # An unreadable manifest raises here rather than being passed over: a broken newest
        # version must be noticed, not silently replaced by an older one.
        manifest = read_manifest(Path(store) / name / str(version))
        if manifest.servable and manifest.precision == precision:
            return version
    raise ManifestError(
        f"{name!r} has versions {versions} in {store}, but no servable {precision} one: its quality "
        "gate rejected every one or none has that precision (see each manifest's gate and precision; "
        "retrain, publish with --force, or export the precision asked for)"
    )


# --- writing -----------------------------------------------------------------------------


def publish(
    store: Path, manifest_fields: dict[str, Any], model_file: Path, extra_files: list[Path] = ()
) -> Manifest:
    """Write ``model_file`` as the next free version of ``manifest_fields["name"]``.

    ``manifest_fields`` holds every :class:`Manifest` field except ``version`` and
    ``sha256``, which are filled in here. The version folder is assembled under a
    temporary name and renamed into place, so a reader never sees half a version.
    ``extra_files`` (plots, reports) are copied beside the model.
    """
    store = Path(store)
    name = manifest_fields["name"]
    (store / name).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=store / name))
    # mkdtemp makes the folder private (0700); a published version is read by other users too
    # (a service account, a container's non-root user), like the files copied into it.
    staging.chmod(0o755)
    try:
        shutil.copyfile(model_file, staging / MODEL_FILE)
        for extra in extra_files:
            shutil.copyfile(extra, staging / Path(extra).name)
        sha = sha256_of(staging / MODEL_FILE)
        while True:
            version = max(list_versions(store, name), default=0) + 1
            manifest = Manifest(**{**manifest_fields, "version": version, "sha256": sha})
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
            try:
                os.rename(staging, store / name / str(version))  # fails if another writer won
                return manifest
            except OSError:
                if not (store / name / str(version)).exists():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
