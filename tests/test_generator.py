"""The conditional digit GAN: architecture, judging, training smoke run, export, committed model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from store_format import MANIFEST_FILE, ManifestError, latest_version, load_verified
from training.export import TrainedModel, export_and_publish
from training.models.generator import (
    ConditionalGenerator,
    GeneratorConfig,
    GeneratorForServing,
    ProjectionDiscriminator,
)
from training.options import TrainOptions
from training.train_generator import (
    COMMITTED_STORE,
    QUALITY_BAR,
    ClassifierJudge,
    GeneratorTrainConfig,
    evaluate,
    evaluation_inputs,
    find_classifier,
    intra_class_distance,
    train,
)

REPO_STORE = Path(__file__).resolve().parents[1] / "model_store"


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def store_with_committed_classifier(store: Path, versions: tuple[int, ...] = (1,)) -> Path:
    """Copy the committed classifier into ``store`` under the given version numbers."""
    source = REPO_STORE / "classifier" / "1"
    for version in versions:
        target = store / "classifier" / str(version)
        shutil.copytree(source, target)
        manifest = json.loads((target / MANIFEST_FILE).read_text())
        manifest["version"] = version
        (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    return store


# --- architecture --------------------------------------------------------------------------


def test_generator_and_discriminator_shapes() -> None:
    torch.manual_seed(0)
    model_cfg = GeneratorConfig()
    generator, discriminator = ConditionalGenerator(model_cfg).eval(), ProjectionDiscriminator(model_cfg)
    latent, labels = torch.randn(6, model_cfg.latent_dim), torch.arange(6)
    images = generator(latent, labels)
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    served = GeneratorForServing(generator)(latent, labels)
    assert served.shape == (6, 1, 8, 8) and served.dtype == torch.float32
    assert served.min() >= 0 and served.max() <= 16
    torch.testing.assert_close(served, (images + 1) * 8)
    logits = discriminator(images, labels)
    assert logits.shape == (6,) and logits.dtype == torch.float32


def test_discriminator_depends_on_the_label() -> None:
    torch.manual_seed(0)
    model_cfg = GeneratorConfig()
    discriminator = ProjectionDiscriminator(model_cfg).eval()
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    as_zero = discriminator(images, torch.zeros(4, dtype=torch.int64))
    as_seven = discriminator(images, torch.full((4,), 7))
    assert not torch.allclose(as_zero, as_seven)


@pytest.mark.parametrize(
    ("latent", "labels", "message"),
    [
        (torch.randn(3, 16), torch.arange(3), r"expected latent of shape \(B, 32\)"),
        (torch.randn(3, 32), torch.arange(3, dtype=torch.int32), "expected int64 labels"),
        (torch.randn(3, 32), torch.zeros(3, 1, dtype=torch.int64), "expected int64 labels"),
    ],
)
def test_generator_rejects_wrong_inputs(latent: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        ConditionalGenerator(GeneratorConfig())(latent, labels)


# --- evaluation helpers --------------------------------------------------------------------


def test_intra_class_distance() -> None:
    images = torch.zeros(5, 1, 8, 8)
    images[1, 0, 0, 0] = 3.0  # class 0: two images 3 apart
    images[3, 0, 0, 0] = 4.0  # class 1: distances 4, 0 and 4 between three images
    labels = torch.tensor([0, 0, 1, 1, 1])
    distances = intra_class_distance(images, labels, 2)
    assert distances == pytest.approx([3.0, 8.0 / 3.0])


def test_evaluation_inputs_are_fixed_and_balanced() -> None:
    cfg, model_cfg = GeneratorTrainConfig(), GeneratorConfig()
    latent, labels = evaluation_inputs(cfg, model_cfg)
    assert latent.shape == (1000, model_cfg.latent_dim) and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [100] * 10
    torch.testing.assert_close(evaluation_inputs(cfg, model_cfg)[0], latent)


def test_find_classifier_prefers_the_newest_in_the_store(tmp_path: Path) -> None:
    store = store_with_committed_classifier(tmp_path / "store", versions=(1, 2))
    manifest, path = find_classifier(store, fallback=tmp_path / "nowhere")
    assert manifest.version == 2 and path == store / "classifier" / "2" / "model.onnx"


def test_find_classifier_falls_back_to_the_committed_store(tmp_path: Path) -> None:
    assert COMMITTED_STORE == REPO_STORE
    manifest, path = find_classifier(tmp_path)
    assert path.parent.parent.parent == REPO_STORE
    assert manifest.name == "classifier"


def test_find_classifier_passes_over_a_rejected_classifier(tmp_path: Path) -> None:
    """A classifier the gate rejected never judges: the committed one does."""
    store = store_with_committed_classifier(tmp_path / "store")
    path = store / "classifier" / "1" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["gate"] = {
        "verdict": "rejected",
        "checks": [{"metric": "test_accuracy", "op": ">=", "threshold": 0.999, "why": "test"}],
    }
    path.write_text(json.dumps(manifest))
    found, model_path = find_classifier(store)
    committed = latest_version(REPO_STORE, "classifier")  # the served one: never a rejected version
    assert model_path == REPO_STORE / "classifier" / str(committed) / "model.onnx"
    assert found.version == committed and (found.gate is None or found.gate.verdict == "passed")
    with pytest.raises(ManifestError, match="train it first"):
        find_classifier(store, fallback=store)


def test_committed_generator_passes_the_quality_bar() -> None:
    manifest, _ = load_verified(REPO_STORE, "generator")
    assert [check.metric for check in QUALITY_BAR] == ["label_accuracy", "intra_class_distance_ratio"]
    assert all(check.passes(manifest.metrics) for check in QUALITY_BAR)


def test_find_classifier_says_to_train_it_first(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="train it first"):
        find_classifier(tmp_path / "a", fallback=tmp_path / "b")


# --- the committed model -------------------------------------------------------------------


def test_committed_generator_manifest() -> None:
    manifest, _ = load_verified(REPO_STORE, "generator")
    assert manifest.task == "conditional-image-generation"
    assert manifest.labels == [str(d) for d in range(10)]
    latent_dim = manifest.serving["latent_dim"]
    assert manifest.serving == {"latent_dim": latent_dim, "num_classes": 10, "value_range": [0, 16]}
    assert manifest.input("latent").datatype == "FP32"
    assert manifest.input("latent").shape == (-1, latent_dim)
    assert manifest.input("labels").datatype == "INT64"
    assert manifest.input("labels").shape == (-1,)
    assert manifest.output("images").datatype == "FP32"
    assert manifest.output("images").shape == (-1, 1, 8, 8)
    assert manifest.metrics["label_accuracy"] >= 0.9
    assert 0.5 < manifest.metrics["intra_class_distance_ratio"] < 1.5  # no mode collapse


@pytest.mark.parametrize("batch", [1, 13])
def test_committed_generator_onnx_shapes_and_range(batch: int) -> None:
    manifest, path = load_verified(REPO_STORE, "generator")
    rng = np.random.default_rng(batch)
    latent = rng.standard_normal((batch, manifest.serving["latent_dim"])).astype(np.float32)
    labels = (np.arange(batch) % 10).astype(np.int64)
    (images,) = session(path).run(["images"], {"latent": latent, "labels": labels})
    assert images.shape == (batch, 1, 8, 8) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 16


def test_committed_classifier_recognises_committed_generator_samples() -> None:
    generator_manifest, generator_path = load_verified(REPO_STORE, "generator")
    latent, labels = evaluation_inputs(GeneratorTrainConfig(), GeneratorConfig())
    (images,) = session(generator_path).run(["images"], {"latent": latent.numpy(), "labels": labels.numpy()})
    # the classifier that judged the generator reproduces its figure; the served one (a later
    # version may judge differently) still recognises nearly all of its samples
    judged_by = generator_manifest.training["judge_classifier_version"]
    for version in sorted({judged_by, latest_version(REPO_STORE, "classifier")}):
        judge = ClassifierJudge(*load_verified(REPO_STORE, "classifier", version))
        accuracy = (judge.predict(torch.from_numpy(images)) == labels).float().mean().item()
        assert accuracy >= 0.9, version
        if version == judged_by:
            assert accuracy == pytest.approx(generator_manifest.metrics["label_accuracy"], abs=0.005)


# --- training, export, publication ---------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainedModel, Path]:
    """A dry-run generator judged by a classifier in its own store, then exported there."""
    store = store_with_committed_classifier(tmp_path_factory.mktemp("store"))
    trained = train(
        TrainOptions(seed=0, epochs=None, dry_run=True, store=store, workdir=tmp_path_factory.mktemp("work"))
    )
    export_and_publish(trained, store)
    return trained, store


@pytest.mark.slow
def test_dry_run_learns_something(dry_run: tuple[TrainedModel, Path]) -> None:
    trained, store = dry_run
    metrics = trained.metrics
    assert math.isfinite(metrics["final_d_loss"]) and math.isfinite(metrics["final_g_loss"])
    assert metrics["judge"].startswith("classifier v1")
    assert metrics["intra_class_distance_generated"] > 0
    assert metrics["intra_class_distance_real"] > 0

    # an untrained generator makes digits the classifier recognises about 10% of the time
    torch.manual_seed(0)
    untrained = GeneratorForServing(ConditionalGenerator(GeneratorConfig())).eval()
    judge = ClassifierJudge(*find_classifier(store))
    latent, labels = evaluation_inputs(GeneratorTrainConfig(), GeneratorConfig())
    before = evaluate(untrained, judge, latent, labels)["label_accuracy"]
    assert before < 0.3
    assert metrics["label_accuracy"] > before + 0.2
    for artifact in trained.artifacts:
        assert artifact.stat().st_size > 1000


@pytest.mark.slow
def test_dry_run_publishes_a_matching_onnx_model(dry_run: tuple[TrainedModel, Path]) -> None:
    trained, store = dry_run
    manifest, path = load_verified(store, "generator", 1)
    assert manifest.version == 1
    # two epochs do not reach the bar: written for inspection, rejected, never served
    assert manifest.gate is not None and manifest.gate.verdict == "rejected"
    assert manifest.metrics["label_accuracy"] < 0.95 or manifest.metrics["intra_class_distance_ratio"] < 0.8
    assert manifest.metrics["onnx_parity_max_abs_diff"] <= 1e-4
    assert manifest.training["dry_run"] is True and manifest.training["seed"] == 0
    assert (path.parent / "generator_samples.png").is_file()
    assert (path.parent / "generator_training_curves.png").is_file()

    latent, labels = evaluation_inputs(GeneratorTrainConfig(), GeneratorConfig())
    with torch.no_grad():
        expected = trained.module(latent, labels).numpy()
    (actual,) = session(path).run(["images"], {"latent": latent.numpy(), "labels": labels.numpy()})
    np.testing.assert_allclose(actual, expected, atol=1e-4)


@pytest.mark.slow
def test_same_seed_same_metrics(dry_run: tuple[TrainedModel, Path], tmp_path: Path) -> None:
    trained, store = dry_run
    again = train(TrainOptions(seed=0, epochs=None, dry_run=True, store=store, workdir=tmp_path))
    assert again.metrics == trained.metrics
