"""What every trainer receives: the options of one ``python -m training train`` run.

This module imports nothing heavy, so the command line and the tests can build options
without loading a trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainOptions:
    """The run-wide options; each trainer keeps its own hyper-parameters in its ``*TrainConfig``."""

    seed: int  # seeds Python, NumPy and torch; the same seed gives the same metrics
    epochs: int | None  # None: the trainer's own default (the one the committed models used)
    dry_run: bool  # a few batches of everything, for CI: proves the code path, not the model
    store: Path  # the model store results are published to (and the classifier is read from)
    workdir: Path  # scratch space for plots before they are copied beside the model

    def epochs_for(self, full: int, dry_run: int) -> int:
        """The epochs to train: ``--epochs`` if given, else ``dry_run`` on a dry run, else ``full``."""
        if self.epochs is not None:
            return self.epochs
        return dry_run if self.dry_run else full
