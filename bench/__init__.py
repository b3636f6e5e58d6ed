"""The benchmark: the service against bare FastAPI servers and in-process ONNX Runtime, in one run.

Run it with ``python -m bench`` (``--help`` for the options; bench/README.md for what it does).
Modules: ``workload`` (request bodies, in-process ONNX Runtime), ``servers`` (the servers under
test and what they use), ``measure`` (wrk runs and the cells measured from them), ``report``
(targets, tables, docs/evidence/benchmarks.md and the plot), ``runs`` (the default run, the settings sweep
and the quick comparison), ``__main__`` (the command line).

This file stays light: ``bench.baseline_app`` is imported by the baseline's own worker processes.
"""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "evidence" / "benchmarks.md"
PLOT = ROOT / "docs" / "images" / "bench-throughput.png"
# Markers of the block `python -m bench.gpu` writes into DOCS; a full run keeps that block.
GPU_BEGIN = "<!-- gpu-benchmark: begin (python -m bench.gpu) -->"
GPU_END = "<!-- gpu-benchmark: end -->"
# Hand-written findings (before/after comparisons, where the tail comes from), copied into the report.
ANALYSIS = ROOT / "bench" / "analysis.md"


def log(message: str) -> None:
    """One progress line on stdout, with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
