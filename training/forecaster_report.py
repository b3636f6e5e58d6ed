"""``python -m training.forecaster_report [--store DIR] [--version N]``: a published forecaster
against the baselines of :mod:`training.forecast_baselines`, on the held-out test weeks.

It reads the ONNX model with ONNX Runtime (no retraining) and uses the trainer's own split
and forecast origins, each history capped at the model's window (as the service does), so its
figures are those a retrain would record in the manifest: on the test weeks, and on the
validation weeks every choice was made on. The figures in docs/training.md for the committed
models come from this report.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from store_format import load_verified
from training.forecast_baselines import bands, held_out_comparison, validation_comparison
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
    """The comparison's metrics (test and validation weeks) for one published forecaster, and a
    title naming it and its window."""
    manifest, model_path = load_verified(store, "forecaster", version)
    y = load_series()[1]
    val_start, test_start = split_points(len(y), ForecasterTrainConfig())
    horizon = manifest.serving["horizon"]
    # versions before the window hint read up to their max_length
    window = manifest.serving.get("window", manifest.serving["max_length"])
    model = onnx_forecaster(model_path, window)
    metrics = held_out_comparison(model, y, val_start, test_start, horizon)
    metrics.update(validation_comparison(model, y, val_start, test_start, horizon))
    return f"forecaster v{manifest.version} (histories capped at {window} weeks)", metrics


def format_table(title: str, metrics: dict[str, Any], horizon: int = 52, split: str = "test") -> str:
    """A plain-text table: MAE overall and per band for the model and each baseline, and bias,
    on the ``split`` weeks (``test`` or ``val``)."""
    names = [band for band, _ in bands(horizon)]
    lead = "" if split == "test" else f"{split}_"

    def row(label: str, values: list[float], sign: str = "") -> str:
        return f"{label:<34}" + "".join(f"{v:>{sign}10.3f}" for v in values)

    header = f"{'':<34}{'overall':>10}" + "".join(
        f"{n.replace('weeks_', 'wk ').replace('_', '-'):>10}" for n in names
    )
    lines = [
        f"{title}: {'test' if split == 'test' else 'validation'} weeks",
        header,
        row("model MAE (ppm)", [metrics[f"{split}_mae"]] + [metrics[f"{split}_mae_{n}"] for n in names]),
    ]
    for name in BASELINES:
        values = [metrics[f"{lead}baseline_mae_{name}"]] + [
            metrics[f"{lead}baseline_mae_{name}_{n}"] for n in names
        ]
        lines.append(row(f"{name} MAE", values))
    for name in BASELINES:
        values = [metrics[f"{lead}mae_ratio_to_{name}"]] + [
            metrics[f"{lead}mae_ratio_to_{name}_{n}"] for n in names
        ]
        lines.append(row(f"model / {name}", values))
    bias = [metrics[f"{split}_bias"]] + [metrics[f"{split}_bias_{n}"] for n in names]
    lines.append(row("model bias (ppm)", bias, "+"))
    lines.append(f"steps biased low: {metrics[f'{split}_steps_biased_low']} of {horizon}")
    if split == "test":
        lines.append(
            f"ridge alpha {metrics['ridge_alpha']:g} (chosen on validation), fitted on "
            f"{metrics['ridge_train_origins']} training origins"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.forecaster_report", description=__doc__)
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--version", type=int, default=None, help="default: the served (newest passing) one")
    args = parser.parse_args(argv)
    title, metrics = report(args.store, args.version)
    print(format_table(title, metrics, split="val"))
    print()
    print(format_table(title, metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
