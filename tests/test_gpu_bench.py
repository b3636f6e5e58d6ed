"""The GPU benchmark mode's own logic: interpolation, targets, its docs block, and its refusal
on a machine without a GPU (the measuring parts are the main benchmark's)."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime as ort
import pytest

from bench.gpu import BEGIN, END, items_per_s_at, markdown, targets, write_docs
from harness.server import ROOT
from service.inference.runtime import CUDA, cuda_device_count

HAS_GPU = CUDA in ort.get_available_providers() and cuda_device_count() > 0
CURVE = [
    {"endpoint": "classify", "batch": 1, "items_per_s": 1_000.0},
    {"endpoint": "classify", "batch": 4, "items_per_s": 4_000.0},
    {"endpoint": "classify", "batch": 256, "items_per_s": 256_000.0},
]


def test_in_process_throughput_is_interpolated_between_measured_batch_sizes():
    assert items_per_s_at(CURVE, 1) == pytest.approx(1_000)
    assert items_per_s_at(CURVE, 2) == pytest.approx(2_000)  # log-log: halfway between 1 and 4
    assert items_per_s_at(CURVE, 64) == pytest.approx(64_000)
    assert items_per_s_at(CURVE, 0.5) is None and items_per_s_at(CURVE, 300) is None


def _served(c: int, req_per_s: float, mean_batch: float) -> dict:
    return {
        "endpoint": "classify",
        "concurrency": c,
        "req_per_s": req_per_s,
        "mean_batch": mean_batch,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "error_count": 0,
    }


@pytest.mark.parametrize(
    ("c256_req_per_s", "scaling_ok", "share_ok"),
    [(50_000.0, True, True), (8_000.0, False, False), (40_000.0, True, False)],
)
def test_targets_compare_c256_with_c1_and_with_in_process_at_the_served_batch(
    c256_req_per_s, scaling_ok, share_ok
):
    # Served mean batch 64: in-process gives 64,000 items/s there (interpolated), 70% is 44,800.
    result = {"served": [_served(1, 900.0, 1.0), _served(256, c256_req_per_s, 64.0)], "in_process": CURVE}
    scaling, share = targets(result)
    assert scaling["ok"] is scaling_ok and share["ok"] is share_ok
    assert "c=256" in scaling["name"] and "10x c=1" in scaling["name"]


def test_the_docs_block_is_replaced_in_place_and_the_rest_is_kept(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nCPU tables.\n")
    result = {
        "started_at": "t",
        "revision": "r",
        "command": "python -m bench.gpu",
        "provider": "CUDAExecutionProvider",
        "machine": {"gpu": "H100", "nproc": 16, "cpu_model": "x"},
        "options": {"workers": 2, "seconds": 10},
        "served": [_served(1, 900.0, 1.0), _served(256, 40_000.0, 64.0)],
        "in_process": CURVE,
    }
    result["targets"] = targets(result)
    write_docs(markdown(result), docs)
    write_docs(markdown({**result, "revision": "r2"}), docs)
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nCPU tables.\n")
    assert text.count(BEGIN) == text.count(END) == 1
    assert "at r2 with" in text and "at r with" not in text
    assert "| /classify | 256 | 40,000 |" in text


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_the_gpu_mode_says_there_is_no_gpu_and_exits_non_zero():
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--no-docs", "--out", "/dev/null"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("python -m bench.gpu: no GPU run here: ")
    assert done.stdout == ""  # nothing was measured or started


def test_a_full_benchmark_report_keeps_the_gpu_section(tmp_path):
    """docs/evidence/benchmarks.md is rewritten by every CPU run; the GPU block, measured elsewhere, stays."""
    from bench import DOCS
    from bench.report import regenerate_docs

    docs = tmp_path / "benchmarks.md"
    docs.write_text(DOCS.read_text())
    write_docs(f"{BEGIN}\n## GPU\nmeasured on a GPU\n{END}\n", docs)
    for _ in range(2):
        assert regenerate_docs(docs=docs, plot_path=tmp_path / "plot.png")
        text = docs.read_text()
        assert text.count(BEGIN) == 1 and "measured on a GPU" in text
