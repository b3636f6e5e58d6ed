"""One folder per run, named by its start time (only the standard library: the smoke and soak
scripts use it without importing Locust)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


def new_run_folder(results_dir: str | Path) -> Path:
    """``<results_dir>/<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that second is taken."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        folder = Path(results_dir) / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder for {stamp} in {results_dir}")
