"""What the benchmark sends, and the in-process ONNX Runtime it compares the servers with.

Request bodies for /classify (one digit-like image each) and /forecast (one CO2-like row of
300-500 values each), written one per line for wrk's ``post.lua``; the models in sessions set up
like the service's, for the ceiling (``in_process``) and for checking the servers' answers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from store_format import load_verified

ENDPOINTS = ("classify", "forecast")
CONCURRENCY = (1, 16, 64)
N_BODIES = 64  # distinct request bodies per endpoint, rotated by wrk
MODEL_OF = {"classify": "classifier", "forecast": "forecaster"}


def classify_bodies(n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` one-image bodies: digit-like 8x8 images, integer ink levels 0..16 as floats."""
    bodies = []
    for _ in range(n):
        image = np.clip(rng.normal(0, 7, size=(8, 8)), 0, 16).round()
        bodies.append({"images": [image.astype(float).tolist()]})
    return bodies


def co2_row(length: int, rng: np.random.Generator) -> list[float]:
    """Weekly CO2-like readings (ppm): trend from ~315, a yearly cycle, noise; ends below ~420."""
    start = rng.uniform(0, 2600 - length)  # weeks since the late 1950s
    t = start + np.arange(length)
    values = 315 + 0.0297 * t + 1.9e-5 * t**2 / 1.5 + 3.0 * np.sin(2 * np.pi * t / 52.18)
    values += rng.normal(0, 0.3, size=length)
    return [round(float(v), 2) for v in values]


def forecast_bodies(n: int, rng: np.random.Generator, lo: int, hi: int) -> list[dict]:
    """``n`` one-row bodies, each of a different length in [lo, hi]."""
    return [{"series": [co2_row(int(rng.integers(lo, hi + 1)), rng)]} for _ in range(n)]


class Model:
    """One model from the store, in an ONNX Runtime session set up like the service's."""

    def __init__(self, store: Path, name: str, threads: int) -> None:
        import onnxruntime as ort

        self.manifest, self.path = load_verified(store, name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.inputs = [t.name for t in self.manifest.inputs]
        self.output = self.manifest.outputs[0].name
        self.threads = threads

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], feeds)[0]

    def feeds(self, endpoint: str, bodies: list[dict]) -> dict[str, np.ndarray]:
        """The batch the service would build from ``bodies`` (rows right-padded)."""
        if endpoint == "classify":
            images = np.asarray([b["images"][0] for b in bodies], dtype=np.float32).reshape(-1, 1, 8, 8)
            return {self.inputs[0]: images}
        rows = [b["series"][0] for b in bodies]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        history = np.zeros((len(rows), int(lengths.max())), dtype=np.float32)
        for i, row in enumerate(rows):
            history[i, : len(row)] = row
        return dict(zip(self.inputs, (history, lengths), strict=True))


def in_process(model: Model, endpoint: str, bodies: list[dict], batch: int, seconds: float) -> dict:
    """Items/s and per-call latency of ``session.run`` alone, on prepared batches."""
    batches = [
        model.feeds(endpoint, [bodies[(i * batch + j) % len(bodies)] for j in range(batch)]) for i in range(8)
    ]
    for feeds in batches:  # warm-up
        model.run(feeds)
    times = []
    cpu0, started = time.process_time(), time.perf_counter()
    deadline = started + seconds
    i = 0
    while True:
        t0 = time.perf_counter_ns()
        model.run(batches[i % len(batches)])
        times.append(time.perf_counter_ns() - t0)
        i += 1
        if time.perf_counter() >= deadline:
            break
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    ms = np.array(times) / 1e6
    return {
        "endpoint": endpoint,
        "batch": batch,
        "threads": model.threads,
        "calls": len(times),
        "items_per_s": len(times) * batch / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "cpu_ms_per_item": cpu * 1000 / (len(times) * batch),
    }


@dataclass
class Workload:
    """The models, the request bodies (in memory and as wrk files) and each endpoint's reference
    answer to its first body."""

    models: dict[str, Model]
    bodies: dict[str, list[dict]]
    files: dict[str, Path]
    references: dict[str, np.ndarray]


def prepare(store: Path, seed: int, threads: int, workdir: Path) -> Workload:
    """Bodies (the same for the same ``seed``), the two models and their reference answers."""
    rng = np.random.default_rng(seed)
    models = {endpoint: Model(store, name, threads) for endpoint, name in MODEL_OF.items()}
    serving = models["forecast"].manifest.serving
    lo = max(300, int(serving.get("min_length", 1)))
    hi = min(500, int(serving.get("max_length", 500)))
    bodies = {
        "classify": classify_bodies(N_BODIES, rng),
        "forecast": forecast_bodies(N_BODIES, rng, lo, hi),
    }
    files = {}
    for endpoint, endpoint_bodies in bodies.items():
        files[endpoint] = workdir / f"{endpoint}.bodies"
        files[endpoint].write_text(
            "".join(json.dumps(b, separators=(",", ":")) + "\n" for b in endpoint_bodies)
        )
    references = {e: models[e].run(models[e].feeds(e, bodies[e][:1]))[0] for e in ENDPOINTS}
    return Workload(models, bodies, files, references)
