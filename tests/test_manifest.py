"""The model store format: manifests, versions, integrity checks and helpful errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from store_format import (
    MANIFEST_FILE,
    MODEL_FILE,
    Gate,
    IntegrityError,
    Manifest,
    ManifestError,
    QualityCheck,
    TensorSpec,
    latest_version,
    list_models,
    list_versions,
    load_verified,
    publish,
    read_manifest,
    sha256_of,
    verify,
)


def manifest_fields(name: str = "classifier") -> dict[str, Any]:
    """Every Manifest field except version and sha256 (which publish fills in)."""
    return {
        "name": name,
        "task": "image-classification",
        "inputs": (TensorSpec("images", "FP32", (-1, 1, 8, 8)),),
        "outputs": (TensorSpec("probabilities", "FP32", (-1, 10)),),
        "opset": 18,
        "metrics": {"test_accuracy": 0.99},
        "training": {"seed": 0, "epochs": 3},
        "dataset": {"name": "sklearn.datasets.load_digits"},
        "labels": [str(d) for d in range(10)],
        "serving": {"value_range": [0, 16], "image_shape": [8, 8]},
        "created_at": "2026-01-01T00:00:00+00:00",
        "producer": {"torch": "x"},
    }


def valid_dict() -> dict[str, Any]:
    manifest = Manifest(**manifest_fields(), version=1, sha256="a" * 64)
    return manifest.to_dict()


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "source" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"not really onnx, but the store only hashes it")
    return path


# --- round trips ---------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip() -> None:
    manifest = Manifest(**manifest_fields(), version=3, sha256="0123456789abcdef" * 4)
    data = manifest.to_dict()
    assert data["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert Manifest.from_dict(json.loads(json.dumps(data))) == manifest


def test_tensor_lookup_by_name() -> None:
    manifest = Manifest(**manifest_fields(), version=1, sha256="b" * 64)
    assert manifest.input("images").shape == (-1, 1, 8, 8)
    assert manifest.output("probabilities").datatype == "FP32"
    with pytest.raises(KeyError, match="no tensor 'pixels'"):
        manifest.input("pixels")


def test_publish_then_read_and_load(tmp_path: Path, model_file: Path) -> None:
    plot = tmp_path / "source" / "curves.png"
    plot.write_bytes(b"png")
    store = tmp_path / "store"
    published = publish(store, manifest_fields(), model_file, extra_files=[plot])

    version_dir = store / "classifier" / "1"
    assert published.version == 1
    assert published.sha256 == sha256_of(model_file)
    assert read_manifest(version_dir) == published
    assert (version_dir / "curves.png").read_bytes() == b"png"
    manifest, path = load_verified(store, "classifier")
    assert manifest == published
    assert path == version_dir / MODEL_FILE
    assert path.read_bytes() == model_file.read_bytes()
    assert list_models(store) == ["classifier"]


# --- version numbering ---------------------------------------------------------------------


def test_versions_count_up_and_latest_wins(tmp_path: Path, model_file: Path) -> None:
    store = tmp_path / "store"
    versions = [publish(store, manifest_fields(), model_file).version for _ in range(3)]
    assert versions == [1, 2, 3]
    assert list_versions(store, "classifier") == [1, 2, 3]
    assert latest_version(store, "classifier") == 3
    assert load_verified(store, "classifier")[0].version == 3
    assert load_verified(store, "classifier", version=2)[0].version == 2


def test_next_version_follows_the_highest_and_ignores_junk(tmp_path: Path, model_file: Path) -> None:
    store = tmp_path / "store"
    publish(store, manifest_fields(), model_file)
    # a gap, a half-written folder without a manifest, a staging folder and a stray file
    (store / "classifier" / "7").mkdir()
    (store / "classifier" / ".classifier-tmp").mkdir()
    (store / "classifier" / "notes.txt").write_text("hello")
    assert list_versions(store, "classifier") == [1]
    assert publish(store, manifest_fields(), model_file).version == 2
    (store / "classifier" / "5").mkdir()
    (store / "classifier" / "5" / MANIFEST_FILE).write_text("{}")
    assert publish(store, manifest_fields(), model_file).version == 6


def test_models_are_numbered_independently(tmp_path: Path, model_file: Path) -> None:
    store = tmp_path / "store"
    publish(store, manifest_fields("classifier"), model_file)
    publish(store, manifest_fields("classifier"), model_file)
    assert publish(store, manifest_fields("generator"), model_file).version == 1
    assert list_models(store) == ["classifier", "generator"]


def test_empty_or_missing_store(tmp_path: Path) -> None:
    assert list_models(tmp_path / "nowhere") == []
    assert list_versions(tmp_path, "classifier") == []
    with pytest.raises(ManifestError, match="no versions of 'classifier'"):
        latest_version(tmp_path, "classifier")
    with pytest.raises(ManifestError, match="no versions of 'classifier'"):
        load_verified(tmp_path, "classifier")


def test_missing_version_lists_the_ones_there(tmp_path: Path, model_file: Path) -> None:
    publish(tmp_path, manifest_fields(), model_file)
    with pytest.raises(ManifestError, match=r"no version 4 .*\[1\]"):
        load_verified(tmp_path, "classifier", version=4)


# --- integrity -----------------------------------------------------------------------------


def test_tampered_model_fails_verification(tmp_path: Path, model_file: Path) -> None:
    manifest = publish(tmp_path, manifest_fields(), model_file)
    version_dir = tmp_path / "classifier" / "1"
    verify(version_dir, manifest)  # untouched: passes
    with open(version_dir / MODEL_FILE, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(IntegrityError, match="changed after it was published"):
        verify(version_dir, manifest)
    with pytest.raises(IntegrityError):
        load_verified(tmp_path, "classifier")


def test_missing_model_file_fails_verification(tmp_path: Path, model_file: Path) -> None:
    publish(tmp_path, manifest_fields(), model_file)
    (tmp_path / "classifier" / "1" / MODEL_FILE).unlink()
    with pytest.raises(IntegrityError, match="does not exist"):
        load_verified(tmp_path, "classifier")


def test_integrity_error_is_a_manifest_error() -> None:
    assert issubclass(IntegrityError, ManifestError)
    assert issubclass(ManifestError, ValueError)


# --- bad manifests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("sha256"), "missing the field 'sha256'"),
        (lambda d: d.pop("inputs"), "missing the field 'inputs'"),
        (lambda d: d.update(name="Bad Name"), "model name 'Bad Name' must match"),
        (lambda d: d.update(version=0), "version must be a positive integer"),
        (lambda d: d.update(version="1"), "version must be a positive integer"),
        (lambda d: d.update(sha256="xyz"), "sha256 must be 64 lowercase hex digits"),
        (lambda d: d.update(training={"epochs": 3}), "training must record the seed"),
        (lambda d: d.update(outputs=[]), "at least one input and one output"),
        (lambda d: d.update(format_version=99), "unsupported manifest format_version 99"),
        (lambda d: d["inputs"][0].update(datatype="float32"), "datatype 'float32' is not one of"),
        (lambda d: d["inputs"][0].update(shape=[-1, 0, 8]), "has a dimension < -1 or 0"),
        (lambda d: d["inputs"][0].update(name=""), "tensor name must be non-empty"),
        (lambda d: d["outputs"][0].pop("shape"), "needs name, datatype and shape"),
        (lambda d: d["serving"].update(min_length=0), "serving.min_length must be a positive integer"),
        (lambda d: d["serving"].update(window=260.5), "serving.window must be a positive integer"),
        (lambda d: d["serving"].update(window=True), "serving.window must be a positive integer"),
        (
            lambda d: d["serving"].update(min_length=104, window=52),
            r"serving.min_length \(104\) is more than serving.window \(52\)",
        ),
        (
            lambda d: d["serving"].update(window=300, max_length=260),
            r"serving.window \(300\) is more than serving.max_length \(260\)",
        ),
    ],
)
def test_bad_manifest_dicts_raise_helpful_errors(change, message: str) -> None:
    data = valid_dict()
    change(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(data)


def write_manifest(tmp_path: Path, name: str, version: str, text: str) -> Path:
    version_dir = tmp_path / name / version
    version_dir.mkdir(parents=True)
    (version_dir / MANIFEST_FILE).write_text(text)
    return version_dir


def test_history_length_hints_in_order_are_accepted() -> None:
    data = valid_dict()
    data["serving"] = {"horizon": 52, "min_length": 104, "window": 260, "max_length": 260}
    assert Manifest.from_dict(data).serving["window"] == 260
    data["serving"] = {"min_length": 104, "max_length": 1040}  # manifests older than the window
    assert "window" not in Manifest.from_dict(data).serving


def test_manifest_file_that_is_not_json(tmp_path: Path) -> None:
    version_dir = write_manifest(tmp_path, "classifier", "1", "{not json")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        read_manifest(version_dir)


def test_manifest_file_missing(tmp_path: Path) -> None:
    (tmp_path / "classifier" / "1").mkdir(parents=True)
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "classifier" / "1")


def test_manifest_in_the_wrong_folder(tmp_path: Path) -> None:
    version_dir = write_manifest(tmp_path, "generator", "2", json.dumps(valid_dict()))
    with pytest.raises(ManifestError, match="describes classifier/1, but lives in generator/2"):
        read_manifest(version_dir)


def test_load_verified_rejects_a_corrupt_manifest(tmp_path: Path, model_file: Path) -> None:
    publish(tmp_path, manifest_fields(), model_file)
    path = tmp_path / "classifier" / "1" / MANIFEST_FILE
    data = json.loads(path.read_text())
    del data["task"]
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="missing the field 'task'"):
        load_verified(tmp_path, "classifier")


# --- the quality gate ----------------------------------------------------------------------

ACCURACY_BAR = (QualityCheck("test_accuracy", ">=", 0.97, "held-out accuracy"),)


def gated_fields(accuracy: float, force: bool = False) -> dict[str, Any]:
    fields = manifest_fields()
    fields["metrics"] = {"test_accuracy": accuracy}
    fields["gate"] = Gate.evaluate(ACCURACY_BAR, fields["metrics"], force=force)
    return fields


@pytest.mark.parametrize(
    ("accuracy", "force", "verdict", "servable"),
    [(0.99, False, "passed", True), (0.93, False, "rejected", False), (0.93, True, "forced", True)],
)
def test_gate_verdicts(accuracy: float, force: bool, verdict: str, servable: bool) -> None:
    manifest = Manifest(**gated_fields(accuracy, force), version=1, sha256="c" * 64)
    assert manifest.gate.verdict == verdict
    assert manifest.servable is servable
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def test_gate_fails_on_missing_or_nan_metrics() -> None:
    check = QualityCheck("mae", "<=", 0.5)
    assert check.passes({"mae": 0.4}) and not check.passes({"mae": 0.6})
    assert (
        not check.passes({}) and not check.passes({"mae": float("nan")}) and not check.passes({"mae": "0.1"})
    )
    assert "MISSED" in check.describe({"mae": 0.6})


def test_manifests_without_a_gate_are_served() -> None:
    data = valid_dict()
    assert data["gate"] is None
    data.pop("gate")  # written before gates existed
    assert Manifest.from_dict(data).servable


def test_a_passed_verdict_its_checks_contradict_is_refused() -> None:
    data = Manifest(**gated_fields(0.99), version=1, sha256="d" * 64).to_dict()
    data["metrics"]["test_accuracy"] = 0.5  # hand-edited after the gate ran
    with pytest.raises(ManifestError, match=r"says the quality gate passed, but test_accuracy = 0.5"):
        Manifest.from_dict(data)
    data["gate"]["verdict"] = "maybe"
    with pytest.raises(ManifestError, match="gate verdict must be passed, rejected or forced"):
        Manifest.from_dict(data)


def test_rejected_versions_are_kept_but_never_the_latest(tmp_path: Path, model_file: Path) -> None:
    publish(tmp_path, gated_fields(0.99), model_file)
    publish(tmp_path, gated_fields(0.93), model_file)  # rejected candidate
    assert list_versions(tmp_path, "classifier") == [1, 2]
    assert latest_version(tmp_path, "classifier") == 1
    assert load_verified(tmp_path, "classifier")[0].version == 1
    rejected, _ = load_verified(tmp_path, "classifier", version=2)  # still there for inspection
    assert rejected.gate.verdict == "rejected"
    publish(tmp_path, gated_fields(0.93, force=True), model_file)
    assert latest_version(tmp_path, "classifier") == 3


def test_a_store_of_rejected_versions_says_so(tmp_path: Path, model_file: Path) -> None:
    publish(tmp_path, gated_fields(0.5), model_file)
    with pytest.raises(ManifestError, match="quality gate rejected every one"):
        latest_version(tmp_path, "classifier")


def test_precision_defaults_to_fp32_and_round_trips() -> None:
    data = valid_dict()
    data.pop("precision", None)  # written before the field existed
    data.pop("derived_from", None)
    assert Manifest.from_dict(data).precision == "fp32"
    half = Manifest(
        **{**manifest_fields(), "precision": "fp16", "derived_from": 1}, version=2, sha256="e" * 64
    )
    again = Manifest.from_dict(json.loads(json.dumps(half.to_dict())))
    assert (again.precision, again.derived_from) == ("fp16", 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"precision": "int8"}, "precision must be one of"),
        ({"precision": "fp16", "derived_from": 2}, "derived_from must be an earlier version"),
    ],
)
def test_bad_precision_fields_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest(**{**manifest_fields(), **change}, version=2, sha256="e" * 64)


def test_latest_version_of_each_precision(tmp_path: Path, model_file: Path) -> None:
    publish(tmp_path, gated_fields(0.99), model_file)  # 1: fp32
    publish(tmp_path, {**gated_fields(0.99), "precision": "fp16", "derived_from": 1}, model_file)  # 2
    publish(
        tmp_path, {**gated_fields(0.5), "precision": "fp16", "derived_from": 1}, model_file
    )  # 3: rejected
    assert latest_version(tmp_path, "classifier") == 1
    assert latest_version(tmp_path, "classifier", precision="fp16") == 2
    assert load_verified(tmp_path, "classifier")[0].precision == "fp32"


def test_a_store_without_the_precision_asked_for_says_so(tmp_path: Path, model_file: Path) -> None:
    publish(tmp_path, gated_fields(0.99), model_file)
    with pytest.raises(ManifestError, match="no servable fp16 one"):
        latest_version(tmp_path, "classifier", precision="fp16")


def test_a_published_version_is_readable_by_other_users(tmp_path: Path, model_file: Path) -> None:
    publish(tmp_path, manifest_fields(), model_file)
    assert (tmp_path / "classifier" / "1").stat().st_mode & 0o755 == 0o755
