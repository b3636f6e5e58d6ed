"""The classifier served through the generic path against the built-in classifier, over V2 binary.

The same ``model.onnx`` is served twice by one server: as the built-in ``classifier`` (its own
pipeline, which also checks the 0..16 range) and, imported with ``python -m store_format
import``, as ``classifier-generic`` (the ``tensor`` task's pipeline). wrk sends both the same
V2 binary body at the same concurrency, alternating model by model and round by round, so
that drift on a shared machine hits both alike. In-process ONNX Runtime (one session, one
intra-op thread, as each worker of a two-worker server has) gives the ceiling.

    python -m bench.generic_v2        # 1 image a request at c=64, 64 images at c=16, 3 rounds
    python -m bench.generic_v2 --seconds 4 --rounds 1 --no-docs   # a smoke run

Writes docs/evidence/generic-v2.md (stamped with date, CPU and commit) and
bench/results/generic-v2.json. Needs wrk and the committed model store; the store is copied,
never changed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from bench import RESULTS, ROOT, log
from bench.measure import run_bounded_wrk
from harness.server import DEFAULT_STORE, bentoml_serve
from store_format import latest_version

LUA = ROOT / "bench" / "wrk" / "v2_binary.lua"
DOCS = ROOT / "docs" / "evidence" / "generic-v2.md"
BUILT_IN, GENERIC = "classifier", "classifier-generic"
# Each server variant: its name and the MODELSERVE_* settings it runs under.
VARIANTS = [
    ("defaults", {}),
    # The generic pipeline runs ONNX Runtime on a helper thread by default (a user's model may be
    # slow); the built-in classifier runs inline. This row runs the generic one inline too.
    ("generic inline", {"MODELSERVE_BATCH_OVERRIDES": json.dumps({GENERIC: {"run_in_thread": False}})}),
]


def body(images: int, folder: Path) -> tuple[Path, int, np.ndarray]:
    """A V2 binary request of ``images`` digits (0..16), its header's length, and the images."""
    x = np.random.default_rng(0).integers(0, 17, size=(images, 1, 8, 8)).astype(np.float32)
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    path = folder / f"v2bin{images}.bin"
    path.write_bytes(header + raw)
    return path, len(header), x


def in_process(model: Path, batch: int, seconds: float) -> float:
    """Items/s of one ONNX Runtime session with one intra-op thread at ``batch``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 16, size=(batch, 1, 8, 8)).astype(np.float32)
    for _ in range(50):
        session.run(None, {"images": x})
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"images": x})
        runs += 1
    return runs * batch / (time.perf_counter() - started)


def check_answers(url: str, path: Path, header_length: int) -> None:
    """Both models answer the body with the same bytes (the same graph on the same batch)."""
    answers = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for model in (BUILT_IN, GENERIC):
            response = http.post(
                f"/v2/models/{model}/infer",
                content=path.read_bytes(),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(header_length),
                },
            )
            response.raise_for_status()
            tail = response.content[int(response.headers["Inference-Header-Content-Length"]) :]
            answers.append(tail)
    if answers[0] != answers[1]:
        raise RuntimeError(f"{path.name}: the generic model's answer differs from the built-in one's")


def wrk(url: str, model: str, path: Path, header_length: int, concurrency: int, seconds: int) -> dict:
    command = [
        "wrk",
        "-t2",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        f"{url}/v2/models/{model}/infer",
        "--",
        str(path),
        str(header_length),
    ]
    result, cpu_s = run_bounded_wrk(command, seconds)
    result["wrk_cpu_s"] = cpu_s
    return result


def measure(args: argparse.Namespace, work: Path) -> dict:
    store = work / "store"
    version = latest_version(DEFAULT_STORE, BUILT_IN)
    shutil.copytree(DEFAULT_STORE / BUILT_IN / str(version), store / BUILT_IN / str(version))
    model_file = store / BUILT_IN / str(version) / "model.onnx"
    imported = subprocess.run(
        [
            sys.executable,
            "-m",
            "store_format",
            "import",
            str(model_file),
            "--name",
            GENERIC,
            "--store",
            str(store),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if imported.returncode != 0:
        raise RuntimeError(f"import failed: {imported.stderr}")
    cells_asked = [tuple(int(x) for x in cell.split("@")) for cell in args.cells]
    bodies = {n: body(n, work) for n in sorted({n for n, _ in cells_asked})}
    ceiling = {n: in_process(model_file, n, args.in_process_seconds) for n in sorted({1, 64, *bodies})}
    log(
        "in-process ONNX Runtime, one session, one thread: "
        + ", ".join(f"batch {n} {v:,.0f} items/s" for n, v in ceiling.items())
    )
    cells = []
    for variant, settings in VARIANTS:
        with bentoml_serve(
            store,
            {"MODELSERVE_MODELS": f"{BUILT_IN},{GENERIC}", **settings},
            workdir=work / variant.replace(" ", "-"),
        ) as server:
            for path, header_length, _ in bodies.values():
                check_answers(server.url, path, header_length)
            for n, concurrency in cells_asked:
                path, header_length, _ = bodies[n]
                for round_ in range(args.rounds):
                    order = (BUILT_IN, GENERIC) if round_ % 2 == 0 else (GENERIC, BUILT_IN)
                    for model in order:
                        wrk(server.url, model, path, header_length, concurrency, 1)  # unmeasured
                        load_before = os.getloadavg()[0]
                        result = wrk(server.url, model, path, header_length, concurrency, args.seconds)
                        seconds = result["duration_us"] / 1e6
                        answered = result["requests"] - result["errors"]["status"]  # 2xx only
                        cell = {
                            "variant": variant,
                            "model": model,
                            "images": n,
                            "concurrency": concurrency,
                            "round": round_,
                            "requests_per_s": answered / seconds,
                            "items_per_s": answered * n / seconds,
                            "p50_ms": result["latency_us"]["p50"] / 1000,
                            "p99_ms": result["latency_us"]["p99"] / 1000,
                            "errors": sum(result["errors"].values()),
                            "load_1min": load_before,
                        }
                        cells.append(cell)
                        log(
                            f"{variant:15} {model:19} {n:2} images c={concurrency}: "
                            f"{cell['requests_per_s']:8,.0f} req/s {cell['items_per_s']:9,.0f} items/s "
                            f"p99 {cell['p99_ms']:6.1f} ms errors {cell['errors']}"
                        )
    return {"ceiling": ceiling, "cells": cells}


def summary(results: dict) -> list[dict]:
    """Medians per variant, model and body size, and the generic/built-in ratio."""
    rows = []
    keys = sorted(
        {(c["variant"], c["images"], c["concurrency"]) for c in results["cells"]}, key=lambda k: (k[1], k[0])
    )
    for variant, n, concurrency in keys:
        medians = {}
        for model in (BUILT_IN, GENERIC):
            key = (variant, n, concurrency, model)
            mine = [
                c
                for c in results["cells"]
                if (c["variant"], c["images"], c["concurrency"], c["model"]) == key
            ]
            medians[model] = {
                field: statistics.median(c[field] for c in mine)
                for field in ("requests_per_s", "items_per_s", "p50_ms", "p99_ms")
            }
            medians[model]["errors"] = sum(c["errors"] for c in mine)
        rows.append(
            {
                "variant": variant,
                "images": n,
                "concurrency": concurrency,
                **medians,
                "ratio": medians[GENERIC]["requests_per_s"] / medians[BUILT_IN]["requests_per_s"],
            }
        )
    return rows


def _ceiling_lines(results: dict, rows: list[dict], cores: int) -> list[str]:
    """Served items/s with 64 images a request against in-process ONNX Runtime, one session per core."""
    ceiling = results["ceiling"].get("64", results["ceiling"].get(64))
    lines = []
    for row in rows:
        if row["images"] != 64 or ceiling is None:
            continue
        for model in (BUILT_IN, GENERIC):
            served = row[model]["items_per_s"]
            lines.append(
                f"- {row['variant']}, {model}, 64 images a request at c={row['concurrency']}: "
                f"{served:,.0f} items/s, "
                f"{served / (ceiling * cores):.0%} of {cores} x the in-process batch-64 figure "
                f"({ceiling * cores:,.0f} items/s, one session per core, every core on ONNX Runtime alone)"
            )
    return lines


def _round_lines(results: dict) -> list[str]:
    cells = results["cells"]
    lines = []
    for key in dict.fromkeys((c["variant"], c["images"], c["concurrency"], c["model"]) for c in cells):
        rounds = [
            c["requests_per_s"]
            for c in cells
            if (c["variant"], c["images"], c["concurrency"], c["model"]) == key
        ]
        variant, images, concurrency, model = key
        listed = ", ".join(f"{r:,.0f}" for r in rounds)
        lines.append(f"- {variant}, {model}, {images} images at c={concurrency}: {listed}")
    return lines


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_docs(results: dict, rows: list[dict], args: argparse.Namespace) -> None:
    commit, measured_at = args.commit, args.measured_at
    loads = [c["load_1min"] for c in results["cells"]]
    lines = [
        "# The classifier through the generic path vs the built-in classifier, V2 binary",
        "",
        f"Measured {measured_at} UTC on {args.cpu}, {args.cpus} CPUs seen, "
        f"commit `{commit}`, with `python -m bench.generic_v2 --seconds {args.seconds} "
        f"--rounds {args.rounds} --cells {' '.join(args.cells)}`",
        "(generated; rerun it rather than edit this file).",
        "",
        "One `bentoml serve` (default settings: one worker per core) serves the committed classifier",
        f"twice: as `{BUILT_IN}` (its own pipeline) and, imported with `python -m store_format import`",
        f"from the same `model.onnx`, as `{GENERIC}` (the generic `tensor` pipeline). Both get the",
        f"same V2 binary body (wrk, 2 threads, {args.seconds} s per cell after 1 s unmeasured),",
        "alternating model by model; each figure is the median of the rounds. The two answers were checked",
        "byte for byte equal before measuring.",
        "",
        f"The machine was shared: the 1-minute load average before each cell ranged {min(loads):.1f} to "
        f"{max(loads):.1f} on {args.cpus} CPUs, so absolute figures are low and noisy; the ratio",
        "between models measured side by side is the figure to read.",
        "",
        "| server | images a request | connections | built-in req/s | generic req/s | generic / built-in "
        "| built-in items/s | generic items/s | built-in p99 ms | generic p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        b, g = row[BUILT_IN], row[GENERIC]
        lines.append(
            f"| {row['variant']} | {row['images']} | {row['concurrency']} | {b['requests_per_s']:,.0f} | "
            f"{g['requests_per_s']:,.0f} | {row['ratio']:.2f} | {b['items_per_s']:,.0f} | "
            f"{g['items_per_s']:,.0f} | {b['p99_ms']:.1f} | {g['p99_ms']:.1f} | "
            f"{b['errors'] + g['errors']} |"
        )
    lines += [
        "",
        "In-process ONNX Runtime, one session with one intra-op thread, same `model.onnx`: "
        + ", ".join(f"batch {n}: {v:,.0f} items/s" for n, v in results["ceiling"].items())
        + ". It was measured on the same busy machine just before the servers started, so it is as",
        "depressed as the served figures; on a quiet machine see docs/performance.md and",
        "docs/evidence/benchmarks.md.",
        "",
        *_ceiling_lines(results, rows, args.cpus),
        "",
        "Every round, req/s (how far apart the rounds of one cell are shows how noisy the machine was):",
        "",
        *_round_lines(results),
        "",
        "`defaults`: the generic pipeline runs ONNX Runtime on a helper thread (its default, since a user's",
        "model may take long enough to hold up the event loop), the built-in classifier inline. `generic",
        f'inline`: `MODELSERVE_BATCH_OVERRIDES=\'{{"{GENERIC}": {{"run_in_thread": false}}}}\'`',
        "runs it inline too.",
        "",
    ]
    DOCS.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cells",
        nargs="+",
        default=["1@64", "64@16"],
        help="IMAGES@CONNECTIONS: images a request and wrk connections (default 1@64 64@16)",
    )
    parser.add_argument("--in-process-seconds", type=float, default=3.0)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the docs from bench/results/generic-v2.json"
    )
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / "generic-v2.json").read_text())
        write_docs(saved["results"], saved["summary"], argparse.Namespace(**saved["run"]))
        log(f"wrote {DOCS.relative_to(ROOT)}")
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    with tempfile.TemporaryDirectory(prefix="generic-v2-") as tmp:
        results = measure(args, Path(tmp))
    rows = summary(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    run = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "cells": args.cells,
        "commit": git.stdout.strip(),
        "measured_at": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
    }
    saved = {"run": run, "results": results, "summary": rows}
    (RESULTS / "generic-v2.json").write_text(json.dumps(saved, indent=2) + "\n")
    for row in rows:
        log(
            f"{row['variant']:15} {row['images']:2} images c={row['concurrency']}: "
            f"generic / built-in req/s = {row['ratio']:.2f}"
        )
    if not args.no_docs:
        write_docs(results, rows, argparse.Namespace(**run))
        log(f"wrote {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
