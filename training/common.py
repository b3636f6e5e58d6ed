"""Small helpers every trainer shares: seeding, devices and training-curve plots."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt
import numpy as np
import torch


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
