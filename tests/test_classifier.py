"""The digit classifier: architecture, training smoke run, export, and the committed model."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from store_format import MANIFEST_FILE, Gate, latest_version, load_verified
from training.cli import EXIT_REJECTED, main
from training.models.classifier import (
    ClassifierConfig,
    DigitClassifier,
    DigitClassifierForServing,
)
from training.options import TrainOptions
from training.train_classifier import (
    ONE_PIXEL_SHIFTS,
    QUALITY_BAR,
    ClassifierTrainConfig,
    confusion_matrix,
    load_split,
    random_affine,
    random_shift,
    shifted,
    train,
)

COMMITTED_STORE = Path(__file__).resolve().parents[1] / "model_store"


def held_out_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = ClassifierTrainConfig()
    return load_split(cfg.test_fraction, cfg.split_seed)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --- architecture --------------------------------------------------------------------------


def test_classifier_shapes_and_dtypes() -> None:
    torch.manual_seed(0)
    model = DigitClassifier(ClassifierConfig()).eval()
    images = torch.randint(0, 17, (5, 1, 8, 8)).float()
    logits = model(images)
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    probabilities = DigitClassifierForServing(model).eval()(images)
    assert probabilities.shape == (5, 10) and probabilities.dtype == torch.float32
    assert torch.all(probabilities >= 0)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(5))


def test_classifier_trains_in_batch_norm_mode_with_gradients() -> None:
    model = DigitClassifier(ClassifierConfig()).train()
    logits = model(torch.rand(4, 1, 8, 8) * 16)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(2, 8, 8), r"expected images of shape \(B, 1, 8, 8\)"),
        (torch.zeros(2, 1, 28, 28), r"got \(2, 1, 28, 28\)"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.float64), "expected float32 images"),
    ],
)
def test_classifier_rejects_wrong_inputs(images: torch.Tensor, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        DigitClassifier(ClassifierConfig())(images)


# --- data ----------------------------------------------------------------------------------


def test_split_is_stratified_and_fixed() -> None:
    x_train, y_train, x_test, y_test = held_out_split()
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert x_train.min() >= 0 and x_train.max() <= 16
    train_share = torch.bincount(y_train) / len(y_train)
    test_share = torch.bincount(y_test) / len(y_test)
    assert torch.allclose(train_share, test_share, atol=0.01)
    torch.testing.assert_close(held_out_split()[2], x_test)


def test_random_shift_moves_images_by_at_most_one_pixel() -> None:
    x = held_out_split()[0][:64]
    assert torch.equal(random_shift(x, 0.0, torch.Generator().manual_seed(0)), x)
    shifted = random_shift(x, 1.0, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert not torch.equal(shifted, x)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for image, original in zip(shifted, padded, strict=True):
        windows = [original[:, 1 + dy : 9 + dy, 1 + dx : 9 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.equal(image, w) for w in windows)


def test_random_affine_keeps_or_moves_images_and_their_ink() -> None:
    _, _, x, _ = held_out_split()
    x = x[:64]
    assert torch.equal(random_affine(x, 0.0, 10.0, 0.1, torch.Generator().manual_seed(0)), x)
    moved = random_affine(x, 1.0, 10.0, 0.1, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and not torch.equal(moved, x)
    assert moved.min() >= 0 and moved.max() <= 16  # bilinear: never outside the pixel range
    # a small rotation, scale and shift keeps most of a digit's ink (some may leave the frame)
    ratio = moved.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ratio.min() > 0.6 and ratio.max() < 1.4
    again = random_affine(x, 1.0, 10.0, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)  # the generator decides everything


def test_shifted_moves_every_image_one_pixel() -> None:
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    for dy, dx in ONE_PIXEL_SHIFTS.values():
        out = shifted(x, dy, dx)[0, 0]
        assert torch.equal(
            out[max(dy, 0) : 8 + min(dy, 0), max(dx, 0) : 8 + min(dx, 0)],
            x[0, 0, max(-dy, 0) : 8 + min(-dy, 0), max(-dx, 0) : 8 + min(-dx, 0)],
        )
        assert out.sum() < x.sum()  # a row or column of zeros came in


def test_confusion_matrix_counts() -> None:
    matrix = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


# --- the committed model -------------------------------------------------------------------


def test_committed_classifier_manifest() -> None:
    manifest, _ = load_verified(COMMITTED_STORE, "classifier")
    assert manifest.task == "image-classification"
    assert manifest.labels == [str(d) for d in range(10)]
    assert manifest.input("images").datatype == "FP32"
    assert manifest.input("images").shape == (-1, 1, 8, 8)
    assert manifest.output("probabilities").datatype == "FP32"
    assert manifest.output("probabilities").shape == (-1, 10)
    assert manifest.serving == {"value_range": [0, 16], "image_shape": [8, 8]}
    assert manifest.dataset["name"] == "sklearn.datasets.load_digits"
    assert manifest.metrics["test_accuracy"] >= 0.98
    assert "seed" in manifest.training


def test_committed_classifier_passes_the_quality_bar_with_margin() -> None:
    manifest, _ = load_verified(COMMITTED_STORE, "classifier")
    assert Gate.evaluate(QUALITY_BAR, manifest.metrics).verdict == "passed"
    # the 2-epoch retrain that once replaced it (test accuracy 0.936) would not
    assert Gate.evaluate(QUALITY_BAR, {**manifest.metrics, "test_accuracy": 0.936}).verdict == "rejected"


@pytest.mark.parametrize("batch", [1, 7, 360])
def test_committed_classifier_onnx_takes_raw_pixels(batch: int) -> None:
    _, path = load_verified(COMMITTED_STORE, "classifier")
    _, _, x_test, y_test = held_out_split()
    (probabilities,) = session(path).run(["probabilities"], {"images": x_test[:batch].numpy()})
    assert probabilities.shape == (batch, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = (probabilities.argmax(axis=1) == y_test[:batch].numpy()).mean()
    assert accuracy >= (0.98 if batch == 360 else 0.5)


# --- training, export, publication ---------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str]:
    """The training command's exit status and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(argv)
    return status, printed.getvalue()


@pytest.fixture(scope="module")
def dry_run_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """A store serving the committed classifier (v1), then a CLI dry run published beside it (v2).

    A dry run is too short to reach the bar, so v2 is the case the gate exists for: a worse
    retrain landing in the store that serves a good model. Returns (store, exit status, output).
    """
    store = tmp_path_factory.mktemp("store")
    shutil.copytree(COMMITTED_STORE / "classifier" / "1", store / "classifier" / "1")
    status, printed = run_cli(["train", "classifier", "--dry-run", "--seed", "0", "--out", str(store)])
    return store, status, printed


@pytest.mark.slow
def test_dry_run_is_rejected_kept_and_not_served(dry_run_store: tuple[Path, int, str]) -> None:
    store, status, printed = dry_run_store
    assert status == EXIT_REJECTED
    manifest, path = load_verified(store, "classifier", 2)
    accuracy = manifest.metrics["test_accuracy"]
    assert manifest.gate is not None and manifest.gate.verdict == "rejected"
    assert [check.metric for check in manifest.gate.checks] == ["test_accuracy"]
    assert f"quality gate: classifier/2\n  test_accuracy = {accuracy} (bar >= 0.97): MISSED" in printed
    assert f"REJECTED: not served, kept at {store / 'classifier' / '2'}" in printed
    assert path.is_file()  # kept for inspection
    assert latest_version(store, "classifier") == 1  # the committed model is still the one served
    saved = json.loads((path.parent / MANIFEST_FILE).read_text())
    assert saved["gate"]["verdict"] == "rejected" and saved["gate"]["checks"][0]["threshold"] == 0.97


@pytest.mark.slow
def test_dry_run_learns_and_publishes(dry_run_store: tuple[Path, int, str]) -> None:
    manifest, path = load_verified(dry_run_store[0], "classifier", 2)
    assert manifest.version == 2
    metrics = manifest.metrics
    assert metrics["test_accuracy"] > 0.5  # chance is 0.1
    assert metrics["test_loss"] < math.log(10) - 0.5  # below the loss of a uniform guess
    assert metrics["n_train"] + metrics["n_test"] == 1797
    assert metrics["onnx_parity_max_abs_diff"] <= 1e-4
    assert manifest.training["dry_run"] is True and manifest.training["seed"] == 0
    for plot in ("classifier_training_curves.png", "classifier_confusion_matrix.png"):
        assert (path.parent / plot).stat().st_size > 1000


@pytest.mark.slow
def test_force_publishes_a_missed_bar_as_servable(dry_run_store: tuple[Path, int, str]) -> None:
    store = dry_run_store[0]
    status, printed = run_cli(["train", "classifier", "--dry-run", "--force", "--out", str(store)])
    assert status == 0
    manifest, _ = load_verified(store, "classifier", 3)
    assert manifest.gate is not None and manifest.gate.verdict == "forced"
    assert "MISSED" in printed and "FORCED: missed its bar, published as servable" in printed
    assert latest_version(store, "classifier") == 3
    # same seed, same model: the forced version is the rejected one, published on purpose
    assert manifest.metrics == load_verified(store, "classifier", 2)[0].metrics


@pytest.mark.slow
def test_same_seed_same_metrics_and_onnx_matches_pytorch(
    dry_run_store: tuple[Path, int, str], tmp_path: Path
) -> None:
    manifest, path = load_verified(dry_run_store[0], "classifier", 2)
    trained = train(TrainOptions(seed=0, epochs=None, dry_run=True, store=tmp_path, workdir=tmp_path))
    published = {k: v for k, v in manifest.metrics.items() if k != "onnx_parity_max_abs_diff"}
    assert trained.metrics == published

    # the exported graph and the PyTorch module agree on real digits, not just random pixels
    _, _, x_test, _ = held_out_split()
    with torch.no_grad():
        expected = trained.module(x_test).numpy()
    (actual,) = session(path).run(["probabilities"], {"images": x_test.numpy()})
    np.testing.assert_allclose(actual, expected, atol=1e-4)
