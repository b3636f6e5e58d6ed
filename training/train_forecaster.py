"""Train the forecaster on statsmodels' weekly Mauna Loa CO2 series.

Split (by time, never shuffled): the last ``test_weeks`` are held out for the final
evaluation only; the ``val_weeks`` before them pick the best epoch and then the history window;
everything before that trains. Training draws random windows of random length from the training
part, so the model sees variable-length, right-padded batches. Evaluation uses rolling forecast origins: every
origin whose next ``horizon`` weeks lie inside the evaluated window, each with all the history
before it (cut to the window chosen on the validation weeks), compared with the baselines of
:mod:`training.forecast_baselines` (two seasonal-naive-with-drift forms and a ridge regression
fitted on the training weeks), overall and per 13-week band of the horizon.

``ForecasterTrainConfig.model`` picks the recipe: ``"gru"`` (the default, forecaster/2's) trains
the GRU + attention network above; ``"residual"`` puts the ridge baseline's own map in the graph
and adds a quarter of the correction of GRUs trained on its out-of-fold errors
(:mod:`training.residual_fit`); ``"linear"`` fits a linear map of the last weeks in closed form
(:mod:`training.linear_forecast`). The recipes are compared on the backtest of
:mod:`training.forecaster_backtest` over twelve earlier two-year windows; the residual one is the
best there but missed the bar on the test weeks, so it is not the default (docs/training.md).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from store_format import QualityCheck
from training.backtest_folds import backtest, summary
from training.common import num_parameters, plot_curves, seed_everything, torch_threads, training_record
from training.export import TrainedModel
from training.forecast_baselines import (
    held_out_comparison,
    origins,
    seasonal_naive_drift,
    targets,
    validation_comparison,
)
from training.linear_forecast import LinearRecipe, linear_forecasts
from training.models.forecaster import Forecaster, ForecasterConfig
from training.models.linear_forecaster import LinearForecaster, LinearForecasterConfig
from training.models.residual_forecaster import ResidualForecaster, ResidualForecasterConfig
from training.options import TrainOptions
from training.residual_fit import ResidualFitConfig, fit_residual

log = logging.getLogger(__name__)

# What a forecaster must reach on the held-out weeks to be served: a lower MAE than every
# baseline of training/forecast_baselines.py. The ridge is the strongest (forecaster/2 reaches
# 0.87x its MAE on the test weeks; its recipe 1.13x averaged over the backtest's twelve earlier
# windows); docs/training.md shows why a model that reads the series alone cannot be expected
# to reach 0.85x of it.
QUALITY_BAR = (
    QualityCheck(
        "mae_ratio_to_ridge",
        "<=",
        1.0,
        why="held-out MAE no higher than a ridge on the last 156 weeks fitted on the training weeks only",
    ),
    QualityCheck(
        "mae_ratio_to_seasonal_naive_drift",
        "<=",
        1.0,
        why="held-out MAE no higher than seasonal naive with one year's drift",
    ),
    QualityCheck(
        "mae_ratio_to_seasonal_naive_step_drift",
        "<=",
        1.0,
        why="held-out MAE no higher than seasonal naive with a drift per step",
    ),
)

TRAIN_LOSS, VAL_MAE = "train loss (MAE, ppm)", "validation MAE (ppm)"

History = dict[str, list[float]]  # one value per epoch for each named curve


# The linear forecaster's recipe (training/linear_forecast.py): the candidate with the lowest mean
# ratio to the ridge over the 12 folds of training/forecaster_backtest.py (1987-1999, no test week).
# No candidate was eligible (every one missed a band); this one has the lowest mean ratio, 0.965.
PRIOR_YEARS = 0
PRIOR_ANCHORED = False
RIDGE_CORRECTION_WINDOW = 156
RIDGE_CORRECTION_ALPHA = 1e2
RIDGE_RECENT_YEARS = 20


@dataclass
class ForecasterTrainConfig:
    """How the forecaster is trained (its architecture is ``ForecasterConfig``)."""

    epochs: int = 25  # default number of epochs (the committed model used this)
    steps_per_epoch: int = 20  # optimiser steps per epoch (an "epoch" is steps of random windows)
    batch_size: int = 64  # windows per step
    min_window: int = 104  # shortest training history (the model's min_length)
    max_window: int = 260  # longest training history (served histories may be longer)
    lr: float = 3e-3  # peak AdamW learning rate, cosine-decayed to lr * final_lr_frac
    final_lr_frac: float = 0.05  # learning rate at the last step, as a fraction of lr
    warmup_steps: int = 20  # linear warm-up steps
    weight_decay: float = 1e-4  # AdamW weight decay
    grad_clip: float = 1.0  # max global gradient norm
    test_weeks: int = 104  # held-out final weeks: evaluation only
    val_weeks: int = 104  # weeks before the test window: model selection only
    eval_batch: int = 64  # origins per forward pass in evaluation
    # history windows (the most recent weeks the model reads) tried on the validation weeks; the
    # one with the lowest validation MAE is recorded as the manifest's serving.window
    windows: tuple[int, ...] = (104, 156, 208, 260, 364, 520, 780, 1040)
    # torch intra-op threads: two, torch's default on the 2-core machine that trained the
    # committed model, so that a retrain there reproduces it (thread counts can change rounding)
    threads: int = 2
    dry_run_epochs: int = 2  # epochs of a dry run (CI smoke test) unless --epochs is given
    # "gru" (the default, forecaster/2's recipe): the GRU + attention network trained by the
    # settings above, 1.131x the ridge on the backtest; "residual": the ridge baseline's map plus
    # GRUs trained on its out-of-fold errors (``residual`` below), 0.988x the ridge on the
    # backtest but 1.022x on the test weeks, so the gate rejected it (docs/training.md); "linear": a
    # map of the last weeks fitted in closed form by the recipe below, which also missed the bar
    model: str = "gru"
    prior_years: int = PRIOR_YEARS
    prior_anchored: bool = PRIOR_ANCHORED
    ridge_window: int = RIDGE_CORRECTION_WINDOW
    ridge_alpha: float = RIDGE_CORRECTION_ALPHA
    ridge_recent_years: int = RIDGE_RECENT_YEARS
    dry_run_origins: int = 8  # training origins a dry run fits the linear map on
    # "residual": the ridge baseline's own map plus GRUs trained on its out-of-fold errors, the
    # correction's step and shrink chosen on the validation weeks (training/residual_fit.py)
    residual: ResidualFitConfig = field(default_factory=ResidualFitConfig)


# A dry run (CI smoke test) also takes fewer and smaller batches of shorter windows.
DRY_RUN_OVERRIDES = {"steps_per_epoch": 3, "batch_size": 16, "max_window": 130, "warmup_steps": 1}


# --- data ----------------------------------------------------------------------------------


def load_series() -> tuple[np.ndarray, np.ndarray, int]:
    """Weekly CO2 (ppm) with its 59 missing weeks linearly interpolated in time.

    Returns (dates as datetime64[D], values float64, number of interpolated weeks).
    """
    import statsmodels.api as sm  # slow import; only when training

    frame = sm.datasets.co2.load_pandas().data
    missing = int(frame["co2"].isna().sum())
    values = frame["co2"].interpolate(method="time").to_numpy(dtype=np.float64)
    assert not np.isnan(values).any(), "interpolation left a gap (at the series' ends?)"
    return frame.index.to_numpy().astype("datetime64[D]"), values, missing


def split_points(n: int, cfg: ForecasterTrainConfig) -> tuple[int, int]:
    """(val_start, test_start): indices of the first validation and first test week."""
    test_start = n - cfg.test_weeks
    val_start = test_start - cfg.val_weeks
    assert val_start > cfg.max_window, "series too short for the split"
    return val_start, test_start


def pad_rows(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D rows with zeros: (history (B, T) float32, lengths (B,) int64)."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    history = np.zeros((len(rows), lengths.max()), dtype=np.float32)
    for i, row in enumerate(rows):
        history[i, : len(row)] = row
    return torch.from_numpy(history), torch.from_numpy(lengths)


def sample_batch(
    y: np.ndarray, train_end: int, horizon: int, cfg: ForecasterTrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random windows whose targets end before ``train_end``: history, lengths, target (B, H).

    The batch's longest length is drawn first, then each row's length below it, so batches
    mix lengths (with real right padding) without always paying for the longest window.
    """
    top = int(rng.integers(cfg.min_window, cfg.max_window + 1))
    lengths = rng.integers(cfg.min_window, top + 1, size=cfg.batch_size)
    ends = [int(rng.integers(L, train_end - horizon + 1)) for L in lengths]
    history, lens = pad_rows([y[e - L : e] for e, L in zip(ends, lengths, strict=True)])
    target = np.stack([y[e : e + horizon] for e in ends]).astype(np.float32)
    return history, lens, torch.from_numpy(target)


# --- evaluation ----------------------------------------------------------------------------


@torch.no_grad()
def forecast(model: Forecaster, y: np.ndarray, ends: list[int], max_len: int, batch: int = 64) -> np.ndarray:
    """Model forecasts (len(ends), H) from each end's history, capped to max_len points."""
    model.eval()
    out = []
    for i in range(0, len(ends), batch):
        rows = [y[max(0, e - max_len) : e] for e in ends[i : i + batch]]
        out.append(model(*pad_rows(rows)).numpy().astype(np.float64))
    return np.concatenate(out)


def evaluate(
    model: Forecaster, y: np.ndarray, start: int, stop: int, max_len: int, batch: int = 64
) -> dict[str, Any]:
    """Rolling-origin MAE of the model and of the baseline on targets inside [start, stop)."""
    H = model.config.horizon
    ends = origins(start, stop, H)
    truth = np.stack([y[e : e + H] for e in ends])  # (O, H)
    pred = forecast(model, y, ends, max_len, batch)
    base = np.stack([seasonal_naive_drift(y, e, H) for e in ends])
    mae, base_mae = float(np.abs(pred - truth).mean()), float(np.abs(base - truth).mean())
    return {
        "mae": mae,
        "baseline_mae": base_mae,
        "origins": len(ends),
        "mae_by_step": np.abs(pred - truth).mean(0),
        "base_by_step": np.abs(base - truth).mean(0),
    }


# --- training ------------------------------------------------------------------------------


def lr_at(step: int, total: int, cfg: ForecasterTrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` over ``cfg.warmup_steps``, then cosine decay to ``lr * final_lr_frac``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(
    model: Forecaster,
    opt: torch.optim.Optimizer,
    history: torch.Tensor,
    lengths: torch.Tensor,
    target: torch.Tensor,
    grad_clip: float,
) -> float:
    """One optimiser step on the batch's MAE (ppm); returns the loss before the step."""
    model.train()
    loss = (model(history, lengths) - target).abs().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item()


@torch.no_grad()
def probe_loss(model: Forecaster, batch: tuple[torch.Tensor, ...]) -> float:
    """MAE (ppm) on a fixed batch in eval mode."""
    history, lengths, target = batch
    model.eval()
    return (model(history, lengths) - target).abs().mean().item()


def train_one_epoch(
    model: Forecaster,
    opt: torch.optim.Optimizer,
    y: np.ndarray,
    train_end: int,
    epoch: int,
    cfg: ForecasterTrainConfig,
    rng: np.random.Generator,
    bar: tqdm,
) -> float:
    """``cfg.steps_per_epoch`` steps on random windows ending before ``train_end``; the mean loss."""
    total = cfg.epochs * cfg.steps_per_epoch
    losses = []
    for step in range(epoch * cfg.steps_per_epoch, (epoch + 1) * cfg.steps_per_epoch):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        history, lengths, target = sample_batch(y, train_end, model.config.horizon, cfg, rng)
        losses.append(train_step(model, opt, history, lengths, target, cfg.grad_clip))
        bar.update(1)
    return float(np.mean(losses))


def fit(
    model: Forecaster, y: np.ndarray, cfg: ForecasterTrainConfig, rng: np.random.Generator, max_len: int
) -> tuple[History, dict[str, float]]:
    """Train on y[:val_start] and keep the epoch with the lowest validation MAE.

    Returns the per-epoch curves and a summary: the loss on a fixed probe batch of training
    windows before training and after the last epoch, and the epoch kept.
    """
    val_start, test_start = split_points(len(y), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    curves: History = {TRAIN_LOSS: [], VAL_MAE: []}
    probe = sample_batch(y, val_start, model.config.horizon, cfg, rng)  # fixed windows: a steady probe
    probe_start = probe_loss(model, probe)
    best, best_state, best_epoch = math.inf, None, 0
    bar = tqdm(total=cfg.epochs * cfg.steps_per_epoch, desc="forecaster", unit="step", leave=False)
    for epoch in range(cfg.epochs):
        train_loss = train_one_epoch(model, opt, y, val_start, epoch, cfg, rng, bar)
        val_mae = evaluate(model, y, val_start, test_start, max_len, cfg.eval_batch)["mae"]
        curves[TRAIN_LOSS].append(train_loss)
        curves[VAL_MAE].append(val_mae)
        bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.3f}", val=f"{val_mae:.3f}")
        if val_mae < best:
            best, best_state, best_epoch = val_mae, copy.deepcopy(model.state_dict()), epoch + 1
    bar.close()
    summary = {"probe_start": probe_start, "probe_end": probe_loss(model, probe), "best_epoch": best_epoch}
    assert best_state is not None, "no epoch was trained (epochs must be >= 1)"
    model.load_state_dict(best_state)
    return curves, summary


def choose_window(
    model: Forecaster, y: np.ndarray, cfg: ForecasterTrainConfig
) -> tuple[int, dict[int, float]]:
    """The history window with the lowest MAE on the validation weeks, and each window's MAE.

    More history is not better beyond a few years (the record's growth keeps changing), so how
    much the model reads is chosen like its epoch: on the validation weeks, never the test weeks.
    """
    model_cfg = model.config
    assert all(model_cfg.min_length <= w <= model_cfg.max_length for w in cfg.windows), (
        f"windows {cfg.windows} must lie within [{model_cfg.min_length}, {model_cfg.max_length}]"
    )
    val_start, test_start = split_points(len(y), cfg)
    maes = {w: evaluate(model, y, val_start, test_start, w, cfg.eval_batch)["mae"] for w in cfg.windows}
    return min(maes, key=maes.__getitem__), maes


def held_out_metrics(
    model: Forecaster,
    y: np.ndarray,
    cfg: ForecasterTrainConfig,
    curves: History,
    summary: dict[str, float],
    window: int,
    val_by_window: dict[int, float],
) -> dict[str, Any]:
    """Test and validation MAE against the baselines with histories cut to ``window`` weeks, the
    validation MAE of every window tried, and the test MAE at other history caps (reported only)."""
    model_cfg = model.config
    val_start, test_start = split_points(len(y), cfg)
    test = evaluate(model, y, test_start, len(y), window, cfg.eval_batch)
    val = evaluate(model, y, val_start, test_start, window, cfg.eval_batch)
    metrics = {
        "test_mae": round(test["mae"], 4),
        "baseline_mae": round(test["baseline_mae"], 4),
        "improvement_vs_baseline": round(1 - test["mae"] / test["baseline_mae"], 4),
        "test_origins": test["origins"],
        "test_history_length": window,
        "window": window,
        **{f"val_mae_window_{w}": round(mae, 4) for w, mae in val_by_window.items()},
        "test_weeks": cfg.test_weeks,
        "horizon": model_cfg.horizon,
        "val_mae": round(val["mae"], 4),
        "val_baseline_mae": round(val["baseline_mae"], 4),
        "best_epoch": summary["best_epoch"],
        "train_loss_last_epoch": round(curves[TRAIN_LOSS][-1], 4),
        # MAE on one fixed batch of training windows before training and after the last epoch
        "probe_loss_start": round(summary["probe_start"], 4),
        "probe_loss_end": round(summary["probe_end"], 4),
    }
    metrics.update(
        held_out_comparison(
            lambda y_, ends: forecast(model, y_, ends, window, cfg.eval_batch),
            y,
            val_start,
            test_start,
            model_cfg.horizon,
        )
    )
    for length in (model_cfg.min_length, 300, 500, 2000):  # same origins and targets, other caps
        metrics[f"test_mae_history_{length}"] = round(
            evaluate(model, y, test_start, len(y), length, cfg.eval_batch)["mae"], 4
        )
    return metrics


# --- plots ---------------------------------------------------------------------------------


def plot_forecasts(
    model: Forecaster, dates: np.ndarray, y: np.ndarray, test_start: int, max_len: int, path: Path
) -> Path:
    """Truth over the held-out weeks, with model and baseline forecasts from a few origins."""
    import matplotlib.pyplot as plt  # training.common already chose the Agg backend

    H = model.config.horizon
    ends = origins(test_start, len(y), H)
    picks = [ends[i] for i in np.linspace(0, len(ends) - 1, 4).round().astype(int)]
    preds = forecast(model, y, picks, max_len)
    res = evaluate(model, y, test_start, len(y), max_len)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2.2, 1]})
    lo = test_start - 78
    ax.plot(dates[lo:], y[lo:], color="black", lw=1, label="observed")
    ax.axvline(dates[test_start], color="grey", ls=":", lw=1)
    ax.text(dates[test_start], y[lo:].max(), " held out", color="grey", va="top")
    for i, (e, p) in enumerate(zip(picks, preds, strict=True)):
        color = f"C{i}"
        steps = dates[e : e + H]
        ax.plot(steps, p, color=color, lw=1.8, label="forecaster" if i == 0 else None)
        ax.plot(
            steps,
            seasonal_naive_drift(y, e, H),
            color=color,
            lw=1,
            ls="--",
            label="seasonal naive + drift" if i == 0 else None,
        )
        ax.plot(dates[e - 1], y[e - 1], "o", color=color, ms=4)
    ax.set_ylabel("CO2 (ppm)")
    ax.set_title(f"Forecasts from {len(picks)} origins in the held-out {len(y) - test_start} weeks")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    steps = np.arange(1, H + 1)
    ax2.plot(steps, res["mae_by_step"], label=f"forecaster ({res['mae']:.3f})")
    ax2.plot(steps, res["base_by_step"], ls="--", label=f"baseline ({res['baseline_mae']:.3f})")
    ax2.set_xlabel("weeks ahead")
    ax2.set_ylabel("MAE (ppm)")
    ax2.set_title(f"Held-out MAE by step, {res['origins']} origins")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_results(
    model: Forecaster,
    curves: History,
    dates: np.ndarray,
    y: np.ndarray,
    test_start: int,
    window: int,
    workdir: Path,
) -> list[Path]:
    """The training curves and the held-out forecasts (histories cut to ``window``), as PNGs."""
    return [
        plot_curves(curves, workdir / "forecaster_curves.png", "forecaster training"),
        plot_forecasts(model, dates, y, test_start, window, workdir / "forecaster_forecasts.png"),
    ]


# --- export --------------------------------------------------------------------------------


def forget_gru_dispatch() -> None:
    """Drop the dispatcher's cached kernel for aten.gru (works around a torch 2.13 issue).

    For a dynamic time axis, torch.onnx.export swaps in a while-loop GRU decomposition, but
    the dispatcher keeps the kernel it resolved during the first export. A second GRU export
    in the same process then traces the stale unrolled decomposition and silently freezes
    the time axis at the example's length. Clearing the cache makes every export resolve
    the kernel afresh; outside an export it costs one re-resolution.
    """
    cache = getattr(torch.ops.aten.gru.input, "_dispatch_cache", None)
    if cache is not None:
        cache.clear()


def make_example_inputs(
    y: np.ndarray, config: ForecasterConfig, seed: int
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """batch -> (history, lengths): real windows with mixed lengths and heavy right padding.

    Batch 2 is the export trace. The exporter re-traces the GRU once per time step of the
    example, so that example is kept short (it fixes no shape: time is a dynamic axis); the
    parity batches (1, 7, 64) use served lengths from min_length up to 520 weeks. Export
    asks for its inputs just before tracing and before each check, so this is also where
    :func:`forget_gru_dispatch` runs.
    """

    def example_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        forget_gru_dispatch()
        rng = np.random.default_rng(seed + batch)
        if batch == 2:
            lengths = np.array([8, 5])
        else:
            lengths = rng.integers(config.min_length, 521, size=batch)
            lengths[0] = 520  # at least one full row
        rows = [y[e - L : e] for L, e in ((L, int(rng.integers(L, len(y) + 1))) for L in lengths)]
        return pad_rows(rows)

    return example_inputs


def dynamic_shapes() -> dict[str, dict[int, object]]:
    """Batch and time are dynamic in ``history``; batch in ``lengths``."""
    batch_dim, time_dim = torch.export.Dim("batch"), torch.export.Dim("time")
    return {"history": {0: batch_dim, 1: time_dim}, "lengths": {0: batch_dim}}


# --- manifest sections ---------------------------------------------------------------------


def dataset_record(
    dates: np.ndarray,
    y: np.ndarray,
    missing: int,
    val_start: int,
    test_start: int,
    validation_use: str = "epoch selection only",
) -> dict[str, Any]:
    """The manifest's ``dataset`` section: the series and its split by time."""
    return {
        "name": "Mauna Loa weekly atmospheric CO2 (statsmodels.datasets.co2)",
        "units": "ppm",
        "frequency": "weekly (W-SAT)",
        "weeks": len(y),
        "first_week": str(dates[0]),
        "last_week": str(dates[-1]),
        "missing_weeks_interpolated": missing,
        "interpolation": "linear in time (pandas interpolate, method='time')",
        "split": {
            "train": f"weeks 0-{val_start - 1} ({dates[0]} to {dates[val_start - 1]}): "
            "random windows, targets inside this part",
            "validation": f"weeks {val_start}-{test_start - 1} ({dates[val_start]} to "
            f"{dates[test_start - 1]}): {validation_use}",
            "test": f"weeks {test_start}-{len(y) - 1} ({dates[test_start]} to {dates[-1]}): "
            "held out, rolling origins, reported metrics only",
        },
    }


# --- entry point ---------------------------------------------------------------------------


def publishable(
    model: Forecaster | LinearForecaster,
    example_inputs: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    *,
    metrics: dict[str, Any],
    training: dict[str, Any],
    dataset: dict[str, Any],
    window: int,
    max_length: int,
    artifacts: list[Path],
) -> TrainedModel:
    """A trained forecaster, of either recipe, as the store publishes it: the same tensors, task,
    quality bar and serving block. ``window`` is the most recent weeks the model reads (the
    service cuts longer histories to it); ``max_length`` the longest history it is meant for."""
    config = model.config
    return TrainedModel(
        name="forecaster",
        task="time-series-forecasting",
        module=model.eval(),
        input_names=["history", "lengths"],
        output_names=["forecast"],
        example_inputs=example_inputs,
        dynamic_shapes=dynamic_shapes(),
        metrics=metrics,
        training=training,
        dataset=dataset,
        labels=None,
        serving={
            "horizon": config.horizon,
            "min_length": config.min_length,
            "window": window,
            "max_length": max_length,
            "units": "ppm",
            "frequency": "weekly",
            "padding": "right",
        },
        artifacts=artifacts,
        quality_bar=QUALITY_BAR,
    )


def train(options: TrainOptions, cfg: ForecasterTrainConfig | None = None) -> TrainedModel:
    """Train, evaluate and plot the forecaster (``cfg.model``'s recipe); returns it ready for export."""
    cfg = cfg or ForecasterTrainConfig(**(DRY_RUN_OVERRIDES if options.dry_run else {}))
    if cfg.model == "linear":
        return train_linear(options, cfg)
    if cfg.model == "residual":
        return train_residual(options, cfg)
    assert cfg.model == "gru", f"unknown forecaster model {cfg.model!r}"
    return train_gru(options, cfg)


def train_gru(options: TrainOptions, cfg: ForecasterTrainConfig) -> TrainedModel:
    """forecaster/2's recipe: the GRU + attention network, its epoch and then its history window
    chosen on the validation weeks."""
    cfg.epochs = options.epochs_for(cfg.epochs, cfg.dry_run_epochs)
    with torch_threads(cfg.threads):
        seed_everything(options.seed)
        rng = np.random.default_rng(options.seed)  # training windows
        model_cfg = ForecasterConfig(min_length=cfg.min_window)
        dates, y, missing = load_series()
        val_start, test_start = split_points(len(y), cfg)
        model = Forecaster(model_cfg)
        log.info(
            "forecaster: %d parameters, %d train / %d val / %d test weeks",
            num_parameters(model),
            val_start,
            test_start - val_start,
            len(y) - test_start,
        )
        started = time.perf_counter()
        curves, summary = fit(model, y, cfg, rng, model_cfg.max_length)
        seconds = time.perf_counter() - started
        window, val_by_window = choose_window(model, y, cfg)
        metrics = held_out_metrics(model, y, cfg, curves, summary, window, val_by_window)
        log.info("forecaster: %s, %.1f s", metrics, seconds)
        artifacts = plot_results(model, curves, dates, y, test_start, window, Path(options.workdir))

    return publishable(
        model,
        make_example_inputs(y, model_cfg, options.seed),
        metrics=metrics,
        training=training_record(
            options,
            cfg,
            model_cfg,
            optimizer="AdamW",
            loss="MAE (ppm)",
            loop_seconds=round(seconds, 1),
        ),
        dataset=dataset_record(dates, y, missing, val_start, test_start),
        window=window,  # chosen on the validation weeks
        max_length=model_cfg.max_length,
        artifacts=artifacts,
    )


# --- the linear forecaster ------------------------------------------------------------------


def linear_example_inputs(
    y: np.ndarray, config: LinearForecasterConfig, seed: int
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """batch -> (history, lengths): real windows from min_length (extended back) to 520 weeks."""

    def example_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seed + batch)
        lengths = rng.integers(config.min_length, 521, size=batch)
        lengths[0] = 520  # at least one full row
        lengths[-1] = config.min_length if batch > 1 else lengths[-1]  # and one extended back
        rows = [y[e - L : e] for L, e in ((L, int(rng.integers(L, len(y) + 1))) for L in lengths)]
        return pad_rows(rows)

    return example_inputs


def fitted_metrics(
    model: LinearForecaster | ResidualForecaster,
    y: np.ndarray,
    cfg: ForecasterTrainConfig,
    fit_record: dict[str, Any],
) -> dict[str, Any]:
    """Held-out figures of either forecaster, from the PyTorch module (histories capped at its
    window): the test weeks against every baseline, the validation weeks likewise, the test MAE
    at other history lengths, and then ``fit_record``, what its fit chose or was chosen on."""
    model_cfg = model.config
    val_start, test_start = split_points(len(y), cfg)
    test = evaluate(model, y, test_start, len(y), model_cfg.window, cfg.eval_batch)
    val = evaluate(model, y, val_start, test_start, model_cfg.window, cfg.eval_batch)
    metrics: dict[str, Any] = {
        "test_mae": round(test["mae"], 4),
        "baseline_mae": round(test["baseline_mae"], 4),
        "improvement_vs_baseline": round(1 - test["mae"] / test["baseline_mae"], 4),
        "test_origins": test["origins"],
        "test_history_length": model_cfg.window,
        "test_weeks": cfg.test_weeks,
        "horizon": model_cfg.horizon,
        "val_mae": round(val["mae"], 4),
        "val_baseline_mae": round(val["baseline_mae"], 4),
        **fit_record,
    }
    predict = lambda y_, ends: forecast(model, y_, ends, model_cfg.window, cfg.eval_batch)  # noqa: E731
    metrics.update(validation_comparison(predict, y, val_start, test_start, model_cfg.horizon))
    metrics.update(held_out_comparison(predict, y, val_start, test_start, model_cfg.horizon))
    for length in (model_cfg.min_length, 300, 500, 2000):  # same origins and targets, other lengths
        metrics[f"test_mae_history_{length}"] = round(
            evaluate(model, y, test_start, len(y), length, cfg.eval_batch)["mae"], 4
        )
    return metrics


def linear_recipe(cfg: ForecasterTrainConfig) -> LinearRecipe:
    """The linear forecaster's recipe as ``cfg`` names it."""
    return LinearRecipe(
        cfg.prior_years, cfg.ridge_window, cfg.ridge_alpha, cfg.prior_anchored, cfg.ridge_recent_years
    )


def train_linear(options: TrainOptions, cfg: ForecasterTrainConfig) -> TrainedModel:
    """The linear forecaster: its map fitted in closed form on the training weeks' origins.

    Nothing is chosen here: the recipe (prior years, the correction's window and penalty) was
    chosen by the backtest of :mod:`training.forecaster_backtest` over 12 earlier two-year
    windows, and the window the model reads is the recipe's. A dry run fits on
    ``cfg.dry_run_origins`` origins only.
    """
    recipe = linear_recipe(cfg)
    model_cfg = LinearForecasterConfig(window=recipe.window, min_length=cfg.min_window)
    with torch_threads(cfg.threads):
        seed_everything(options.seed)
        dates, y, missing = load_series()
        val_start, test_start = split_points(len(y), cfg)
        H = model_cfg.horizon
        train_ends = recipe.fitted_origins(list(range(recipe.window, val_start - H + 1)))
        if options.dry_run:
            picks = np.linspace(0, len(train_ends) - 1, cfg.dry_run_origins).round().astype(int)
            train_ends = [train_ends[i] for i in picks]
        started = time.perf_counter()
        weight, bias = recipe.fit(y, train_ends, H)
        seconds = time.perf_counter() - started
        model = LinearForecaster(model_cfg)
        model.set_map(torch.from_numpy(weight), torch.from_numpy(bias))
        train_truth = targets(y, train_ends, H)
        train_error = linear_forecasts(weight, bias, y, train_ends) - train_truth
        fit_record = {
            "recipe": recipe.name,
            "train_origins": len(train_ends),
            # in-sample MAE on the training origins: the map, and the last value alone
            "train_mae": round(float(np.abs(train_error).mean()), 4),
            "train_mae_last_value": round(
                float(np.abs(y[np.array(train_ends) - 1][:, None] - train_truth).mean()), 4
            ),
        }
        scores = backtest(y, [recipe])[recipe.name]  # the figures it was chosen on
        backtest_summary = summary(scores)
        fit_record.update(
            backtest_folds=len(scores),
            backtest_mae_ratio_to_ridge=round(backtest_summary["score"], 4),
            **{f"backtest_mae_ratio_to_ridge_{b}": round(v, 4) for b, v in backtest_summary["bands"].items()},
        )
        metrics = fitted_metrics(model, y, cfg, fit_record)
        log.info("forecaster: %s, fitted in %.2f s", metrics, seconds)
        plot = Path(options.workdir) / "forecaster_forecasts.png"
        artifacts = [plot_forecasts(model, dates, y, test_start, model_cfg.window, plot)]

    return publishable(
        model,
        linear_example_inputs(y, model_cfg, options.seed),
        metrics=metrics,
        training=training_record(
            options,
            cfg,
            model_cfg,
            fit="closed form: prior plus a ridge correction (training/linear_forecast.py)",
            loss="squared error (ridge)",
            loop_seconds=round(seconds, 3),
        ),
        dataset=dataset_record(
            dates, y, missing, val_start, test_start, "reported (also the backtest's latest fold)"
        ),
        window=model_cfg.window,  # the recipe's
        max_length=model_cfg.window,
        artifacts=artifacts,
    )


# --- the residual forecaster: the ridge plus a GRU on what it leaves -------------------------


def residual_example_inputs(
    y: np.ndarray, config: ResidualForecasterConfig, seed: int
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """The linear forecaster's examples (the two read a window the same way), each preceded by
    :func:`forget_gru_dispatch` because this graph holds GRUs too."""
    examples = linear_example_inputs(y, config, seed)

    def example_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        forget_gru_dispatch()
        return examples(batch)

    return example_inputs


def train_residual(options: TrainOptions, cfg: ForecasterTrainConfig) -> TrainedModel:
    """The residual forecaster: the ridge baseline's map in the graph plus GRUs trained on its
    out-of-fold errors, their step and shrink chosen on the validation weeks
    (:mod:`training.residual_fit`). An epoch is ``eval_every`` steps, one validation score."""
    fit_cfg = cfg.residual
    epochs = options.epochs_for(fit_cfg.steps // fit_cfg.eval_every, cfg.dry_run_epochs)
    fit_cfg = replace(fit_cfg, steps=epochs * fit_cfg.eval_every)
    model_cfg = ResidualForecasterConfig(min_length=cfg.min_window)
    with torch_threads(cfg.threads):
        seed_everything(options.seed)
        dates, y, missing = load_series()
        val_start, test_start = split_points(len(y), cfg)
        started = time.perf_counter()
        model, fit_record = fit_residual(y, val_start, test_start, fit_cfg, options.seed, model_cfg)
        seconds = time.perf_counter() - started
        log.info(
            "forecaster: %d parameters, shrink %.2f at step %d (validation MAE %.4f, the ridge %.4f)",
            num_parameters(model),
            fit_record["shrink"],
            fit_record["kept_step"],
            fit_record["val_mae_kept"],
            fit_record["val_mae_ridge"],
        )
        # the full-correction curve goes to the plot below, not into the metrics
        summary_record = {k: v for k, v in fit_record.items() if k != "val_curve_full_correction"}
        metrics = fitted_metrics(model, y, cfg, summary_record)
        log.info("forecaster: %s, %.1f s", metrics, seconds)
        curve = {
            "validation MAE, full correction (ppm)": [m for _, m in fit_record["val_curve_full_correction"]],
            "validation MAE, the ridge (ppm)": [fit_record["val_mae_ridge"]] * epochs,
        }
        workdir, window = Path(options.workdir), model_cfg.window
        artifacts = [
            plot_curves(curve, workdir / "forecaster_curves.png", "residual forecaster training"),
            plot_forecasts(model, dates, y, test_start, window, workdir / "forecaster_forecasts.png"),
        ]

    return publishable(
        model,
        residual_example_inputs(y, model_cfg, options.seed),
        metrics=metrics,
        training=training_record(
            options,
            cfg,
            model_cfg,
            optimizer="AdamW",
            loss="MAE (ppm) of the ridge's out-of-fold errors",
            loop_seconds=round(seconds, 1),
        ),
        dataset=dataset_record(
            dates, y, missing, val_start, test_start, "the ridge's penalty, the GRUs' step and shrink"
        ),
        window=model_cfg.window,
        max_length=model_cfg.window,
        artifacts=artifacts,
    )
