"""Reading Locust's ``<prefix>_stats_history.csv``: one row per second of the run.

With ``--csv-full-history`` the percentiles of each row are those of the last ~10 seconds,
and Requests/s is the rate over the same window, so the rows trace the run over time.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Point:
    timestamp: int
    users: int
    rps: float
    failures_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    total_requests: int
    total_failures: int


def _number(text: str) -> float | None:
    return None if text in ("", "N/A") else float(text)


def aggregated(path: Path) -> list[Point]:
    """The run's "Aggregated" rows (all requests together), in time order."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    return [
        Point(
            timestamp=int(row["Timestamp"]),
            users=int(row["User Count"]),
            rps=float(row["Requests/s"]),
            failures_per_s=float(row["Failures/s"]),
            p50_ms=_number(row["50%"]),
            p99_ms=_number(row["99%"]),
            total_requests=int(row["Total Request Count"]),
            total_failures=int(row["Total Failure Count"]),
        )
        for row in rows
    ]
