"""``python -m training.forecaster_report [--store DIR] [--version N]``: a published forecaster
against the baselines of :mod:`training.forecast_baselines`, on the held-out test weeks.

It reads the ONNX model with ONNX Runtime (no retraining) and uses the trainer's own split
and forecast origins, so its figures are those a retrain would record in the manifest. The
figures in docs/training.md for the committed model come from this report.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from store_format import load_verified
from training.forecast_baselines import bands, held_out_comparison
from training.train_forecaster import ForecasterTrainConfig, load_series, pad_rows, split_points

BASELINES = ("seasonal_naive_drift", "seasonal_naive_step_drift", "ridge")


def onnx_forecaster(model_path: Path, max_length: int):
    """(y, ends) -> forecasts (len(ends), H) from ONNX Runtime, each history capped to max_length."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def predict(y: np.ndarray, ends: list[int]) -> np.ndarray:
        history, lengths = pad_rows([y[max(0, e - max_length) : e] for e in ends])
        feeds = {"history": history.numpy(), "lengths": lengths.numpy()}
        return session.run(None, feeds)[0].astype(np.float64)

    return predict


def report(store: Path, version: int | None) -> tuple[str, dict[str, Any]]:
    """The comparison's metrics for one published forecaster, and a title naming it."""
    manifest, model_path = load_verified(store, "forecaster", version)
    y = load_series()[1]
    val_start, test_start = split_points(len(y), ForecasterTrainConfig())
    horizon = manifest.serving["horizon"]
    model = onnx_forecaster(model_path, manifest.serving["max_length"])
    metrics = held_out_comparison(model, y, val_start, test_start, horizon)
    return f"forecaster v{manifest.version}", metrics


def format_table(title: str, metrics: dict[str, Any], horizon: int = 52) -> str:
    """A plain-text table: MAE overall and per band for the model and each baseline, and bias."""
    names = [band for band, _ in bands(horizon)]

    def row(label: str, values: list[float], sign: str = "") -> str:
        return f"{label:<34}" + "".join(f"{v:>{sign}10.3f}" for v in values)

    header = f"{'':<34}{'overall':>10}" + "".join(
        f"{n.replace('weeks_', 'wk ').replace('_', '-'):>10}" for n in names
    )
    lines = [
        title,
        header,
        row("model MAE (ppm)", [metrics["test_mae"]] + [metrics[f"test_mae_{n}"] for n in names]),
    ]
    for name in BASELINES:
        values = [metrics[f"baseline_mae_{name}"]] + [metrics[f"baseline_mae_{name}_{n}"] for n in names]
        lines.append(row(f"{name} MAE", values))
    for name in BASELINES:
        values = [metrics[f"mae_ratio_to_{name}"]] + [metrics[f"mae_ratio_to_{name}_{n}"] for n in names]
        lines.append(row(f"model / {name}", values))
    bias = [metrics["test_bias"]] + [metrics[f"test_bias_{n}"] for n in names]
    lines.append(row("model bias (ppm)", bias, "+"))
    lines.append(
        f"steps biased low: {metrics['test_steps_biased_low']} of {horizon}; ridge alpha "
        f"{metrics['ridge_alpha']:g} (chosen on validation), fitted on {metrics['ridge_train_origins']} "
        "training origins"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.forecaster_report", description=__doc__)
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--version", type=int, default=None, help="default: the served (newest passing) one")
    args = parser.parse_args(argv)
    title, metrics = report(args.store, args.version)
    print(format_table(title, metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
