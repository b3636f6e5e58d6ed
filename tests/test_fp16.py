"""fp16 variants: conversion of the committed fp32 models, parity, quality gate, and serving.

Each variant is converted from a copy of the committed store with ONNX Runtime's own converter
and evaluated in real ONNX Runtime sessions; the serving tests start a real ``bentoml serve``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.inference.registry import version_to_serve
from service.inference.runtime import ModelLoadError
from service.platform.settings import Settings
from store_format import ManifestError, latest_version, list_versions, load_verified, read_manifest
from tests.conftest import COMMITTED_STORE, serve
from tests.test_service import digit_images
from training.cli import main
from training.export import ParityError
from training.fp16 import FP16_TOLERANCES, cpu_session, export_fp16

MODELS = ("classifier", "forecaster", "generator")
# Each variant's headline metric, and how far it may move from the fp32 version's.
HEADLINE = {
    "classifier": ("test_accuracy", 0.0),
    "forecaster": ("test_mae", 0.01),
    "generator": ("label_accuracy", 0.01),
}


def committed_versions(name: str) -> tuple[int, int]:
    """(the committed fp32 version the variant is made from, the variant's version: the next)."""
    fp32 = latest_version(COMMITTED_STORE, name)
    return fp32, fp32 + 1


@pytest.fixture(scope="module")
def fp16_store(tmp_path_factory) -> Path:
    """A copy of the committed store with an fp16 variant of each model's served fp32 version."""
    store = tmp_path_factory.mktemp("fp16") / "model_store"
    shutil.copytree(COMMITTED_STORE, store)
    for name in MODELS:
        export_fp16(store, name)
    return store


@pytest.mark.parametrize("name", MODELS)
def test_the_variant_is_an_fp16_version_derived_from_fp32(fp16_store: Path, name: str) -> None:
    fp32_version, half_version = committed_versions(name)
    fp32, fp32_path = load_verified(fp16_store, name, fp32_version)
    half, half_path = load_verified(fp16_store, name, half_version)
    assert (half.precision, half.derived_from, fp32.precision) == ("fp16", fp32_version, "fp32")
    assert half.serving == fp32.serving  # the same limits and history window
    assert half.gate.verdict == "passed"
    assert half.inputs == fp32.inputs and half.outputs == fp32.outputs  # clients see no change
    weights = onnx.load(str(half_path)).graph.initializer
    assert sum(w.data_type == onnx.TensorProto.FLOAT16 for w in weights) > len(weights) / 2
    assert half_path.stat().st_size < 0.7 * fp32_path.stat().st_size
    assert latest_version(fp16_store, name) == fp32_version  # fp32 stays the default
    assert latest_version(fp16_store, name, precision="fp16") == half_version


@pytest.mark.parametrize("name", MODELS)
def test_the_variant_matches_fp32_and_keeps_its_quality(fp16_store: Path, name: str) -> None:
    fp32_version, half_version = committed_versions(name)
    fp32 = read_manifest(fp16_store / name / str(fp32_version))
    half = read_manifest(fp16_store / name / str(half_version))
    assert 0 < half.metrics["fp16_parity_max_abs_diff"] <= FP16_TOLERANCES[name]
    metric, allowed = HEADLINE[name]
    assert abs(half.metrics[metric] - fp32.metrics[metric]) <= allowed
    assert all(check.passes(half.metrics) for check in half.gate.checks)


def test_a_variant_outside_the_tolerance_is_not_published(store_copy: Path) -> None:
    with pytest.raises(ParityError, match=r"fp16 differs from fp32 by .* > 1e-06"):
        export_fp16(store_copy, "classifier", tolerance=1e-6)
    assert list_versions(store_copy, "classifier") == list_versions(COMMITTED_STORE, "classifier")


def test_only_an_fp32_version_is_converted(fp16_store: Path) -> None:
    _, half_version = committed_versions("classifier")
    with pytest.raises(ManifestError, match=f"classifier/{half_version} is fp16"):
        export_fp16(fp16_store, "classifier", from_version=half_version)


def test_the_command_line_publishes_and_prints_the_verdict(store_copy: Path, capsys) -> None:
    next_version = max(list_versions(store_copy, "classifier")) + 1
    assert main(["export-fp16", "classifier", "--from-version", "1", "--out", str(store_copy)]) == 0
    printed = capsys.readouterr().out
    assert f"quality gate: classifier/{next_version} (fp16, from v1)\n  test_accuracy = 0.988889" in printed
    assert "PUBLISHED as servable" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["export-fp16", "all", "--from-version", "1", "--out", str(store_copy)])
    assert exit_info.value.code == 2


def test_the_version_served_follows_precision_unless_pinned(fp16_store: Path, store_copy: Path) -> None:
    assert version_to_serve(Settings(model_store=fp16_store), "classifier") is None  # highest fp32
    half_version = committed_versions("classifier")[1]
    assert version_to_serve(Settings(model_store=fp16_store, precision="fp16"), "classifier") == half_version
    pinned = Settings(model_store=fp16_store, precision="fp16", model_versions={"classifier": 1})
    assert version_to_serve(pinned, "classifier") == 1
    with pytest.raises(ModelLoadError, match="no servable fp16 one"):
        version_to_serve(Settings(model_store=store_copy, precision="fp16"), "classifier")


def classify(server, images: list) -> tuple[str, np.ndarray]:
    """(the classifier version the server reports, its probabilities for ``images``)."""
    with server.client() as http:
        versions = http.get("/v2/models/classifier").json()["versions"]
        answer = http.post("/classify", json={"images": images})
    assert answer.status_code == 200, answer.text
    return versions, np.array(answer.json()["probabilities"])


def test_the_server_serves_fp16_only_when_asked(fp16_store: Path, tmp_path: Path) -> None:
    images, _ = digit_images(64)
    fp32_version, half_version = committed_versions("classifier")
    fp32 = cpu_session(str(fp16_store / "classifier" / str(fp32_version) / "model.onnx"))
    expected = fp32.run(None, {"images": np.array(images, dtype=np.float32)[:, None]})[0]
    with serve(tmp_path / "fp16", fp16_store, models="classifier", workers="1", precision="fp16") as server:
        versions, probabilities = classify(server, images)
        assert f"classifier/{half_version}" in server.log_text()
    assert versions == [str(half_version)]
    assert np.abs(probabilities - expected).max() <= FP16_TOLERANCES["classifier"]
    with serve(tmp_path / "fp32", fp16_store, models="classifier", workers="1") as server:
        versions, probabilities = classify(server, images)
    assert versions == [str(fp32_version)]
    assert np.abs(probabilities - expected).max() <= 1e-5
