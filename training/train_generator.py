"""Train the conditional digit GAN on scikit-learn's ``load_digits``; export only its generator.

``python -m training train generator`` calls :func:`train`. The generator is judged by the
newest published classifier (run through ONNX Runtime, exactly as it is served): the share of
1,000 generated digits (100 per class, fixed latents) that it recognises as the requested digit.
Mode collapse is checked by comparing the mean pairwise L2 distance between samples of one
class, generated versus real.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from store_format import Manifest, ManifestError, QualityCheck, list_versions, load_verified, read_manifest
from training.common import (
    DIGIT_LABELS,
    num_parameters,
    plot_curves,
    seed_everything,
    torch_threads,
    training_record,
)
from training.export import TrainedModel
from training.models.generator import (
    ConditionalGenerator,
    GeneratorConfig,
    GeneratorForServing,
    ProjectionDiscriminator,
)
from training.options import TrainOptions

log = logging.getLogger(__name__)

# The repository's committed model store: where the judging classifier comes from when the
# store being trained into has none.
COMMITTED_STORE = Path(__file__).resolve().parents[1] / "model_store"

# What a generator must reach to be served, judged on 1,000 samples (100 per digit). The
# committed one reaches 0.984 and a distance ratio of 0.95; a generator that draws one image
# per digit (mode collapse) can fool the judge, so the spread within each digit is checked too.
QUALITY_BAR = (
    QualityCheck(
        "label_accuracy",
        ">=",
        0.95,
        why="share of generated digits the served classifier recognises as the digit asked for",
    ),
    QualityCheck(
        "intra_class_distance_ratio",
        ">=",
        0.8,
        why="no mode collapse: generated digits of one class vary at least 0.8x as much as real ones",
    ),
)
# The curves plotted per epoch: train_one_epoch's statistics under their plot labels, then
# the classifier's label accuracy on the fixed evaluation samples.
EPOCH_STATS = {"d_loss": "D loss", "g_loss": "G loss", "d_real": "D(real)", "d_fake": "D(fake)"}
LABEL_ACCURACY = "label accuracy"

History = dict[str, list[float]]  # one value per epoch for each named curve


@dataclass
class GeneratorTrainConfig:
    """How the GAN is trained (its architecture is ``GeneratorConfig``)."""

    epochs: int = 60  # passes over the data (the committed model used this default)
    batch_size: int = 64  # real images (and as many generated ones) per step
    lr_g: float = 2e-4  # Adam learning rate of the generator
    lr_d: float = 2e-4  # Adam learning rate of the discriminator
    beta1: float = 0.5  # Adam beta1, as in DCGAN
    real_target: float = 0.9  # one-sided label smoothing: the discriminator's target for real
    samples_per_class: int = 100  # generated digits per class in the evaluation
    eval_seed: int = 1234  # seed of the evaluation latents, fixed so runs are comparable
    bn_recalibration_batches: int = 50  # batches used to re-estimate the generator's BN stats
    # torch intra-op threads: tiny 8x8 convolutions gain little from a second thread, and one
    # thread is not starved by oversubscription when other jobs share the two cores
    threads: int = 1
    dry_run_epochs: int = 2  # epochs of a dry run (CI smoke test) unless --epochs is given


# --- data and judge ------------------------------------------------------------------------


def load_real() -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``load_digits``: images (N, 1, 8, 8) float32 in 0..16 and labels (N,) int64."""
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32)[:, None])  # (N, 1, 8, 8)
    return images, torch.from_numpy(digits.target).long()


def find_classifier(store: Path, fallback: Path = COMMITTED_STORE) -> tuple[Manifest, Path]:
    """The classifier the service would serve from ``store``, else from ``fallback``; raises if neither.

    A classifier its quality gate rejected is never the judge: the generator is judged by the
    model users get.
    """
    for candidate in (Path(store), Path(fallback)):
        versions = list_versions(candidate, "classifier")
        # an unreadable manifest raises here, as it would in the service, rather than being skipped
        if versions and any(read_manifest(candidate / "classifier" / str(v)).servable for v in versions):
            return load_verified(candidate, "classifier")
        if versions:
            log.info("every classifier in %s was rejected by its quality gate; looking further", candidate)
    raise ManifestError(
        f"no servable classifier in {store} or {fallback}: the generator is evaluated by the classifier, "
        "so train it first (python -m training train classifier --out <store>)"
    )


class ClassifierJudge:
    """The published classifier, run with ONNX Runtime on the CPU, as a label recogniser."""

    def __init__(self, manifest: Manifest, model_path: Path, threads: int = 1) -> None:
        self.manifest = manifest
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_path), session_options, providers=["CPUExecutionProvider"]
        )
        self.input_name = manifest.inputs[0].name
        self.output_name = manifest.outputs[0].name

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, 8, 8) in 0..16 -> predicted digits (N,)."""
        probabilities = self.session.run(
            [self.output_name], {self.input_name: images.numpy().astype(np.float32)}
        )[0]  # (N, 10)
        return torch.from_numpy(probabilities.argmax(axis=1))


def intra_class_distance(images: torch.Tensor, labels: torch.Tensor, n_classes: int) -> list[float]:
    """Per class: the mean L2 distance between all pairs of its images (flattened, 0..16)."""
    flat = images.flatten(1).double()  # (N, 64)
    return [torch.pdist(flat[labels == c]).mean().item() for c in range(n_classes)]


# --- the GAN -------------------------------------------------------------------------------


@dataclass
class GAN:
    """The two networks being trained, their optimisers, and the generator as it is exported."""

    generator: ConditionalGenerator  # images in [-1, 1]
    discriminator: ProjectionDiscriminator
    opt_g: torch.optim.Optimizer  # the generator's
    opt_d: torch.optim.Optimizer  # the discriminator's
    serving: GeneratorForServing  # wraps ``generator``: images in 0..16, what is judged and exported


def build_gan(model_cfg: GeneratorConfig, cfg: GeneratorTrainConfig) -> GAN:
    """Both networks (initialised generator first, from torch's global RNG) and their Adam optimisers."""
    generator, discriminator = ConditionalGenerator(model_cfg), ProjectionDiscriminator(model_cfg)
    return GAN(
        generator=generator,
        discriminator=discriminator,
        opt_g=torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, 0.999)),
        opt_d=torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999)),
        serving=GeneratorForServing(generator),
    )


# --- train / evaluate ----------------------------------------------------------------------


def train_one_epoch(
    gan: GAN, x: torch.Tensor, y: torch.Tensor, cfg: GeneratorTrainConfig, rng: torch.Generator
) -> dict[str, float]:
    """One pass over the real data (x in [-1, 1]); returns mean losses and D outputs (EPOCH_STATS)."""
    generator, discriminator = gan.generator, gan.discriminator
    generator.train()
    discriminator.train()
    latent_dim = generator.config.latent_dim
    n_classes = generator.config.n_classes
    sums = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
    batches = torch.randperm(len(x), generator=rng).split(cfg.batch_size)
    for idx in batches:
        real, labels = x[idx], y[idx]  # (B, 1, 8, 8), (B,)
        b = len(idx)
        latent = torch.randn(b, latent_dim, generator=rng)  # (B, L)
        fake_labels = torch.randint(0, n_classes, (b,), generator=rng)  # (B,)
        fake = generator(latent, fake_labels)  # (B, 1, 8, 8)

        # discriminator: real -> real_target, fake -> 0
        logits_real = discriminator(real, labels)  # (B,)
        logits_fake = discriminator(fake.detach(), fake_labels)  # (B,)
        d_loss = F.binary_cross_entropy_with_logits(
            logits_real, torch.full_like(logits_real, cfg.real_target)
        ) + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        gan.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        gan.opt_d.step()

        # generator: make the discriminator call its images real (non-saturating loss)
        logits_gen = discriminator(fake, fake_labels)  # (B,)
        g_loss = F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))
        gan.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        gan.opt_g.step()

        sums["d_loss"] += d_loss.item() * b
        sums["g_loss"] += g_loss.item() * b
        sums["d_real"] += torch.sigmoid(logits_real).sum().item()
        sums["d_fake"] += torch.sigmoid(logits_fake).sum().item()
    n = sum(len(idx) for idx in batches)
    return {k: v / n for k, v in sums.items()}


@torch.no_grad()
def recalibrate_batchnorm(
    generator: ConditionalGenerator, cfg: GeneratorTrainConfig, rng: torch.Generator
) -> None:
    """Re-estimate the generator's BN running statistics for its final weights.

    During training the running averages trail weights that keep moving; averaging the batch
    statistics of the finished generator over many batches makes eval mode (what is exported)
    behave like the generator the discriminator last saw.
    """
    bns = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the batches below
    generator.train()
    n_classes, latent_dim = generator.config.n_classes, generator.config.latent_dim
    for _ in range(cfg.bn_recalibration_batches):
        labels = torch.randint(0, n_classes, (cfg.batch_size,), generator=rng)
        generator(torch.randn(cfg.batch_size, latent_dim, generator=rng), labels)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    generator.eval()


def evaluation_inputs(
    cfg: GeneratorTrainConfig, model_cfg: GeneratorConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed latents (N, L) and labels (N,): ``samples_per_class`` per class, class-major."""
    g = torch.Generator().manual_seed(cfg.eval_seed)
    labels = torch.arange(model_cfg.n_classes).repeat_interleave(cfg.samples_per_class)  # (N,)
    return torch.randn(len(labels), model_cfg.latent_dim, generator=g), labels


@torch.no_grad()
def evaluate(
    serving: GeneratorForServing, judge: ClassifierJudge, latent: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """Generate (in eval mode, as exported) and let the classifier judge the labels."""
    serving.eval()
    images = serving(latent, labels)  # (N, 1, 8, 8) in 0..16
    predicted = judge.predict(images)  # (N,)
    correct = (predicted == labels).float()
    n_classes = serving.generator.config.n_classes
    per_class = [correct[labels == c].mean().item() for c in range(n_classes)]
    return {"images": images, "label_accuracy": correct.mean().item(), "per_class": per_class}


def plot_samples(generated: torch.Tensor, real: torch.Tensor, path: Path, title: str) -> Path:
    """Two 10x10 panels (generated, real): one row per digit, dark ink on a light page.

    ``generated`` and ``real`` are (10, 10, 8, 8) in 0..16: [digit, sample, row, column].
    """

    def mosaic(images: torch.Tensor) -> np.ndarray:
        rows, cols, h, w = images.shape
        canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
        for r in range(rows):
            for c in range(cols):
                canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[r, c]
        return canvas

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.9))
    cmap = plt.get_cmap("gray_r").with_extremes(bad="white")
    for ax, images, name in ((axes[0], generated, "generated"), (axes[1], real, "real")):
        ax.imshow(mosaic(images), cmap=cmap, vmin=0, vmax=16, interpolation="nearest")
        ax.set_yticks([r * 9 + 3.5 for r in range(images.shape[0])], [str(r) for r in range(images.shape[0])])
        ax.set_xticks([])
        ax.set_ylabel("digit")
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- steps ---------------------------------------------------------------------------------


def fit(
    gan: GAN,
    real: tuple[torch.Tensor, torch.Tensor],
    judge: ClassifierJudge,
    evaluation: tuple[torch.Tensor, torch.Tensor],
    cfg: GeneratorTrainConfig,
    rng: torch.Generator,
) -> History:
    """Train for ``cfg.epochs``, judging the fixed evaluation samples after each, then
    re-estimate the generator's batch-norm statistics.

    ``real`` is (images (N, 1, 8, 8) in [-1, 1], labels (N,)); ``evaluation`` is
    :func:`evaluation_inputs`' (latent (M, L), labels (M,)).
    """
    history: History = {name: [] for name in (*EPOCH_STATS.values(), LABEL_ACCURACY)}
    progress = tqdm(range(cfg.epochs), desc="generator", unit="epoch")
    for _ in progress:
        stats = train_one_epoch(gan, *real, cfg, rng)
        accuracy = evaluate(gan.serving, judge, *evaluation)["label_accuracy"]
        for key, name in EPOCH_STATS.items():
            history[name].append(stats[key])
        history[LABEL_ACCURACY].append(accuracy)
        progress.set_postfix(d=f"{stats['d_loss']:.3f}", g=f"{stats['g_loss']:.3f}", acc=f"{accuracy:.3f}")
    recalibrate_batchnorm(gan.generator, cfg, rng)
    return history


def sample_metrics(
    result: dict[str, Any],
    eval_labels: torch.Tensor,
    real: tuple[torch.Tensor, torch.Tensor],
    history: History,
    judge: ClassifierJudge,
    n_classes: int,
) -> dict[str, Any]:
    """Label accuracy and intra-class distances of the final samples, for the manifest.

    ``result`` is :func:`evaluate`'s on the fixed evaluation inputs (labels ``eval_labels``);
    ``real`` is (images (N, 1, 8, 8) in 0..16 like the generated ones, labels (N,)).
    """
    real_images, real_labels = real
    dist_gen = intra_class_distance(result["images"], eval_labels, n_classes)
    dist_real = intra_class_distance(real_images, real_labels, n_classes)
    mean_gen, mean_real = float(np.mean(dist_gen)), float(np.mean(dist_real))
    return {
        "label_accuracy": round(result["label_accuracy"], 6),
        "per_class_label_accuracy": {
            label: round(a, 6) for label, a in zip(DIGIT_LABELS, result["per_class"], strict=True)
        },
        "intra_class_distance_generated": round(mean_gen, 4),
        "intra_class_distance_real": round(mean_real, 4),
        "intra_class_distance_ratio": round(mean_gen / mean_real, 4),
        "per_class_intra_class_distance": {
            label: {"generated": round(g, 4), "real": round(r, 4)}
            for label, g, r in zip(DIGIT_LABELS, dist_gen, dist_real, strict=True)
        },
        "final_d_loss": round(history["D loss"][-1], 6),
        "final_g_loss": round(history["G loss"][-1], 6),
        "n_generated": len(eval_labels),
        "n_real": len(real_images),
        "judge": f"classifier v{judge.manifest.version} "
        f"(test_accuracy {judge.manifest.metrics.get('test_accuracy')})",
    }


def plot_results(
    history: History,
    generated: torch.Tensor,
    real: tuple[torch.Tensor, torch.Tensor],
    cfg: GeneratorTrainConfig,
    n_classes: int,
    label_accuracy: float,
    workdir: Path,
) -> list[Path]:
    """The training curves and a grid of generated digits beside real ones, as PNGs in ``workdir``.

    ``generated`` is (N, 1, 8, 8) in 0..16, class-major as :func:`evaluation_inputs` orders it;
    ``real`` is (images (N', 1, 8, 8) in 0..16, labels (N',)).
    """
    real_images, real_labels = real
    per_row = min(10, cfg.samples_per_class)
    grid = generated.view(n_classes, cfg.samples_per_class, 8, 8)[:, :per_row]  # (10, per_row, 8, 8)
    real_grid = torch.stack(
        [real_images[real_labels == c][:per_row, 0] for c in range(n_classes)]
    )  # (10, per_row, 8, 8)
    return [
        plot_curves(
            history,
            workdir / "generator_training_curves.png",
            "conditional GAN: losses, D outputs, classifier label accuracy",
        ),
        plot_samples(
            grid,
            real_grid,
            workdir / "generator_samples.png",
            f"conditional GAN samples (label accuracy {label_accuracy:.3f})",
        ),
    ]


def dataset_record(n_samples: int) -> dict[str, Any]:
    """The manifest's ``dataset`` section: all of ``load_digits``, unsplit."""
    return {
        "name": "sklearn.datasets.load_digits",
        "n_samples": n_samples,
        "split": "none: the GAN trains on all images; it is judged by the classifier on generated samples",
        "scaling": "pixels 0..16 mapped to [-1, 1] for training",
    }


def example_inputs(batch: int, latent_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic example inputs for export and parity: latent (B, L), labels (B,) int64."""
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, latent_dim, generator=g), torch.arange(batch) % 10


# --- entry point ---------------------------------------------------------------------------


def train(options: TrainOptions) -> TrainedModel:
    """Train the GAN, judge its generator with the classifier, plot; returns it for export."""
    cfg = GeneratorTrainConfig()
    cfg.epochs = options.epochs_for(cfg.epochs, cfg.dry_run_epochs)
    with torch_threads(cfg.threads):
        # fail before training, not after, when there is no classifier to judge the samples
        judge = ClassifierJudge(*find_classifier(options.store), threads=cfg.threads)
        rng = seed_everything(options.seed)
        real_images, real_labels = load_real()  # (N, 1, 8, 8) in 0..16, (N,)
        x = real_images / 8.0 - 1.0  # (N, 1, 8, 8) in [-1, 1]
        model_cfg = GeneratorConfig()
        gan = build_gan(model_cfg, cfg)
        log.info(
            "generator: %d parameters, discriminator: %d, %d real images; judged by classifier v%d",
            num_parameters(gan.generator),
            num_parameters(gan.discriminator),
            len(x),
            judge.manifest.version,
        )
        evaluation = evaluation_inputs(cfg, model_cfg)  # fixed latents (M, L), labels (M,)
        started = time.perf_counter()
        history = fit(gan, (x, real_labels), judge, evaluation, cfg, rng)
        seconds = time.perf_counter() - started
        result = evaluate(gan.serving, judge, *evaluation)
        real = (real_images, real_labels)
        metrics = sample_metrics(result, evaluation[1], real, history, judge, model_cfg.n_classes)
        log.info(
            "generator: label accuracy %.4f, intra-class distance %.2f generated vs %.2f real, %.1f s",
            result["label_accuracy"],
            metrics["intra_class_distance_generated"],
            metrics["intra_class_distance_real"],
            seconds,
        )
        artifacts = plot_results(
            history,
            result["images"],
            real,
            cfg,
            model_cfg.n_classes,
            result["label_accuracy"],
            Path(options.workdir),
        )

    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    latent_dim = model_cfg.latent_dim
    return TrainedModel(
        name="generator",
        task="conditional-image-generation",
        module=gan.serving.eval(),
        input_names=["latent", "labels"],
        output_names=["images"],
        example_inputs=lambda b: example_inputs(b, latent_dim),
        dynamic_shapes={"latent": {0: batch_dim}, "labels": {0: batch_dim}},
        metrics=metrics,
        training=training_record(
            options,
            cfg,
            model_cfg,
            optimizer="Adam",
            loss="non-saturating BCE, one-sided label smoothing",
            loop_seconds=round(seconds, 1),
            judge_classifier_version=judge.manifest.version,
        ),
        dataset=dataset_record(len(real_images)),
        labels=DIGIT_LABELS,
        serving={
            "latent_dim": model_cfg.latent_dim,
            "num_classes": model_cfg.n_classes,
            "value_range": [0, 16],
        },
        artifacts=artifacts,
        quality_bar=QUALITY_BAR,
    )
