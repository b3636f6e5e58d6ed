"""Train the digit classifier on scikit-learn's ``load_digits`` and hand it over for export.

``python -m training train classifier`` calls :func:`train`. The data is split once,
stratified, into train and held-out test sets; the test set is never trained on and is only
used to report metrics (there is no early stopping or model selection on it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.nn import functional as F
from tqdm import tqdm

from training.cli import TrainOptions
from training.common import plot_curves, seed_everything, torch_threads
from training.export import TrainedModel
from training.models.classifier import (
    ClassifierConfig,
    DigitClassifier,
    DigitClassifierForServing,
)

log = logging.getLogger(__name__)

LABELS = [str(d) for d in range(10)]
TRAIN_LOSS = "train loss (augmented, label-smoothed)"


@dataclass
class ClassifierTrainConfig:
    epochs: int = 40  # passes over the training set (the committed model used this default)
    batch_size: int = 64  # images per optimiser step
    lr: float = 3e-3  # peak learning rate of the one-cycle schedule (AdamW)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    label_smoothing: float = 0.05  # cross-entropy label smoothing during training only
    shift_prob: float = 0.5  # probability an image is shifted by up to 1 pixel each way
    test_fraction: float = 0.2  # share of the data held out (stratified) for evaluation
    split_seed: int = 0  # seed of the train/test split, fixed so every run sees the same test set
    # torch intra-op threads: tiny 8x8 convolutions gain little from a second thread, and one
    # thread is not starved by oversubscription when other jobs share the two cores
    threads: int = 1
    dry_run_epochs: int = 2  # epochs of a dry run (CI smoke test) unless --epochs is given


# --- data ----------------------------------------------------------------------------------


def load_split(
    test_fraction: float, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images (N, 1, 8, 8) float32 in 0..16, labels int64."""
    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None]  # (N, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        digits.target,
        test_size=test_fraction,
        stratify=digits.target,
        random_state=split_seed,
    )
    return (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train).long(),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test).long(),
    )


def random_shift(images: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each image (B, 1, H, W) by -1, 0 or +1 pixels per axis with probability ``prob``.

    Pixels shifted in are 0 (background), as in the data itself.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (1, 1, 1, 1))  # (B, 1, H+2, W+2)
    shifts = torch.randint(-1, 2, (b, 2), generator=generator)  # (B, 2): dy, dx
    keep = torch.rand(b, generator=generator) >= prob
    shifts[keep] = 0
    out = torch.empty_like(images)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            mask = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[mask] = padded[mask, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


# --- train / test --------------------------------------------------------------------------


def train_epoch(
    model: DigitClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ClassifierTrainConfig,
    generator: torch.Generator,
) -> float:
    """One pass over (x, y) in shuffled batches; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total, count = 0.0, 0
    for idx in order.split(cfg.batch_size):
        images = random_shift(x[idx], cfg.shift_prob, generator)  # (B, 1, 8, 8)
        logits = model(images)  # (B, 10)
        loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
        count += len(idx)
    return total / count


@torch.no_grad()
def evaluate(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Loss, accuracy and predictions of ``model`` on (x, y), in eval mode."""
    model.eval()
    logits = model(x)  # (N, 10)
    pred = logits.argmax(dim=-1)  # (N,)
    return {
        "loss": F.cross_entropy(logits, y).item(),
        "accuracy": (pred == y).float().mean().item(),
        "pred": pred,
    }


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, n: int) -> np.ndarray:
    """(n, n) counts; rows are true classes, columns predicted classes."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y_true.numpy(), y_pred.numpy()), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    im = ax.imshow(matrix, cmap="Blues")
    threshold = matrix.max() / 2
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > threshold else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- main ----------------------------------------------------------------------------------


def train(options: TrainOptions) -> TrainedModel:
    """Train, evaluate and plot the classifier; returns it ready for export."""
    cfg = ClassifierTrainConfig()
    cfg.epochs = options.epochs_for(cfg.epochs, cfg.dry_run_epochs)
    with torch_threads(cfg.threads):
        return fit(options, cfg)


def fit(options: TrainOptions, cfg: ClassifierTrainConfig) -> TrainedModel:
    """The body of :func:`train`, with the configuration settled."""
    generator = seed_everything(options.seed)

    x_train, y_train, x_test, y_test = load_split(cfg.test_fraction, cfg.split_seed)
    model_cfg = ClassifierConfig()
    model = DigitClassifier(model_cfg)
    log.info(
        "classifier: %d parameters, %d train / %d test images",
        model.num_parameters(),
        len(x_train),
        len(x_test),
    )

    steps_per_epoch = len(x_train.split(cfg.batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2
    )

    history: dict[str, list[float]] = {TRAIN_LOSS: [], "test loss": [], "test accuracy": []}
    started = time.perf_counter()
    progress = tqdm(range(cfg.epochs), desc="classifier", unit="epoch")
    for _ in progress:
        train_loss = train_epoch(model, optimizer, scheduler, x_train, y_train, cfg, generator)
        result = evaluate(model, x_test, y_test)
        history[TRAIN_LOSS].append(train_loss)
        history["test loss"].append(result["loss"])
        history["test accuracy"].append(result["accuracy"])
        progress.set_postfix(loss=f"{train_loss:.3f}", test_acc=f"{result['accuracy']:.3f}")
    seconds = time.perf_counter() - started

    result = evaluate(model, x_test, y_test)
    train_result = evaluate(model, x_train, y_train)
    matrix = confusion_matrix(y_test, result["pred"], model_cfg.n_classes)
    per_class = matrix.diagonal() / matrix.sum(axis=1)
    metrics = {
        "test_accuracy": round(result["accuracy"], 6),
        "test_loss": round(result["loss"], 6),
        "train_accuracy": round(train_result["accuracy"], 6),
        "test_errors": int(len(y_test) - matrix.trace()),
        "per_class_test_accuracy": {
            label: round(float(a), 6) for label, a in zip(LABELS, per_class, strict=True)
        },
        "n_train": len(x_train),
        "n_test": len(x_test),
        "n_parameters": model.num_parameters(),
    }
    log.info(
        "classifier: test accuracy %.4f (%d errors of %d), loss %.4f, %.1f s",
        result["accuracy"],
        metrics["test_errors"],
        len(y_test),
        result["loss"],
        seconds,
    )

    workdir = Path(options.workdir)
    artifacts = [
        plot_curves(
            history,
            workdir / "classifier_training_curves.png",
            "digit classifier: loss and held-out accuracy",
        ),
        plot_confusion(
            matrix,
            LABELS,
            workdir / "classifier_confusion_matrix.png",
            f"held-out confusion matrix (accuracy {result['accuracy']:.3f})",
        ),
    ]

    serving_module = DigitClassifierForServing(model).eval()
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    return TrainedModel(
        name="classifier",
        task="image-classification",
        module=serving_module,
        input_names=["images"],
        output_names=["probabilities"],
        example_inputs=lambda b: (example_images(b),),
        dynamic_shapes={"images": {0: batch_dim}},
        metrics=metrics,
        training={
            "seed": options.seed,
            "dry_run": options.dry_run,
            **asdict(cfg),
            "model": asdict(model_cfg),
            "optimizer": "AdamW",
            "schedule": "OneCycleLR",
            "loop_seconds": round(seconds, 1),
        },
        dataset={
            "name": "sklearn.datasets.load_digits",
            "n_samples": len(x_train) + len(x_test),
            "split": "stratified train/test (sklearn.model_selection.train_test_split)",
            "test_fraction": cfg.test_fraction,
            "split_seed": cfg.split_seed,
            "n_train": len(x_train),
            "n_test": len(x_test),
            "augmentation": f"random shifts of up to 1 pixel (p={cfg.shift_prob})",
        },
        labels=LABELS,
        serving={"value_range": [0, 16], "image_shape": [8, 8]},
        artifacts=artifacts,
    )


def example_images(batch: int) -> torch.Tensor:
    """Deterministic example inputs for export and parity: (batch, 1, 8, 8) in 0..16."""
    g = torch.Generator().manual_seed(batch)
    return torch.randint(0, 17, (batch, 1, 8, 8), generator=g).float()
