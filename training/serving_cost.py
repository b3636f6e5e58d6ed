"""``python -m training.serving_cost classifier 1 2``: what each version costs to serve, side by side.

Each version's ``model.onnx`` runs in this process in ONNX Runtime (CPU, one intra-op thread, as
a serving worker's session would on a busy machine) on the same real inputs, at batch 1 and 64,
the versions interleaved round by round so that load from anything else on the machine falls on
all of them alike. Printed: the median time per call and per item of each version, and its ratio
to the first version named. ``--out`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from store_format import load_verified

BATCHES = (1, 64)


def inputs(name: str, batch: int) -> dict[str, np.ndarray]:
    """Real inputs for ``name``'s graph at ``batch``: test digits for the classifier."""
    assert name == "classifier", "only the classifier's inputs are prepared here"
    from training.train_classifier import ClassifierTrainConfig, load_split

    cfg = ClassifierTrainConfig()
    x_test = load_split(cfg.test_fraction, cfg.split_seed)[2].numpy()
    return {"images": x_test[np.arange(batch) % len(x_test)]}


def measure(store: Path, name: str, versions: list[int], rounds: int, seconds: float) -> dict[str, dict]:
    """Median seconds per call, per version and batch: ``rounds`` rounds of about ``seconds`` each."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {
        v: ort.InferenceSession(
            str(load_verified(store, name, v)[1]), options, providers=["CPUExecutionProvider"]
        )
        for v in versions
    }
    figures: dict[str, dict] = {}
    for batch in BATCHES:
        feeds = inputs(name, batch)
        calls = {}
        for v, session in sessions.items():  # warm up, and size a round to about ``seconds``
            started, n = time.perf_counter(), 0
            while time.perf_counter() - started < seconds / 4:
                session.run(None, feeds)
                n += 1
            calls[v] = max(10, int(n * 4 / (time.perf_counter() - started) * seconds / 4))
        times: dict[int, list[float]] = {v: [] for v in versions}
        for _ in range(rounds):
            for v, session in sessions.items():
                started = time.perf_counter()
                for _ in range(calls[v]):
                    session.run(None, feeds)
                times[v].append((time.perf_counter() - started) / calls[v])
        first = float(np.median(times[versions[0]]))
        figures[str(batch)] = {
            str(v): {
                "seconds_per_call": float(np.median(t)),
                "seconds_per_item": float(np.median(t)) / batch,
                "ratio_to_first": float(np.median(t)) / first,
            }
            for v, t in times.items()
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.serving_cost", description=__doc__)
    parser.add_argument("name", choices=["classifier"])
    parser.add_argument(
        "versions", type=int, nargs="+", help="versions to compare; the first is the reference"
    )
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one version's round")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)
    figures = measure(args.store, args.name, args.versions, args.rounds, args.seconds)
    print(f"{'batch':>5}  {'version':>7}  {'us per call':>11}  {'us per item':>11}  {'ratio':>6}")
    for batch, by_version in figures.items():
        for v, f in by_version.items():
            print(
                f"{batch:>5}  {v:>7}  {f['seconds_per_call'] * 1e6:>11.1f}  "
                f"{f['seconds_per_item'] * 1e6:>11.2f}  {f['ratio_to_first']:>6.2f}"
            )
    if args.out:
        args.out.write_text(json.dumps({"name": args.name, "batches": figures}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
