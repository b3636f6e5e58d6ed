"""One folder per run, named by its start time, and the headless Locust command that fills it
(only the standard library: the smoke and soak scripts use it without importing Locust)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

LOCUSTFILE = Path(__file__).resolve().parents[1] / "locustfile.py"


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


def headless_locust(
    url: str, folder: Path, users: int, spawn_rate: int, seconds: float, *options: str
) -> list[str]:
    """Locust on every workload against ``url`` for ``seconds``, its CSVs and HTML report in ``folder``."""
    return [
        str(Path(sys.executable).parent / "locust"),
        *("-f", str(LOCUSTFILE), "--host", url, "--headless", "--only-summary"),
        *("-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds:.0f}s"),
        *("--csv", str(folder / "locust"), "--csv-full-history"),
        *("--html", str(folder / "locust_report.html")),
        *options,
    ]
