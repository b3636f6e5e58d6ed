"""What the three trainers share: seeding, torch threads, the manifest's training record, plots.

Every trainer runs on the CPU, on the thread count its config names; nothing here picks a device.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from training.options import TrainOptions

# The class names of the digit models (classifier and generator): the digits themselves.
DIGIT_LABELS = [str(d) for d in range(10)]


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG a trainer touches; returns a torch generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch threads, then give the next trainer back the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def num_parameters(module: nn.Module) -> int:
    """How many parameters ``module`` has, counting every tensor in ``module.parameters()``."""
    return sum(p.numel() for p in module.parameters())


def training_record(options: TrainOptions, cfg: Any, model_cfg: Any, **details: Any) -> dict[str, Any]:
    """The manifest's ``training`` section: run options, hyper-parameters, architecture, then details.

    ``cfg`` is the trainer's ``*TrainConfig`` and ``model_cfg`` the architecture's ``*Config``
    (both dataclasses); ``details`` are what only this trainer knows (optimizer, loss, timings).
    """
    return {
        "seed": options.seed,
        "dry_run": options.dry_run,
        **asdict(cfg),
        "model": asdict(model_cfg),
        **details,
    }


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> Path:
    """One line per series in ``history`` (e.g. {"train loss": [...], "test accuracy": [...]})."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, values in history.items():
        ax.plot(range(1, len(values) + 1), values, label=label)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
