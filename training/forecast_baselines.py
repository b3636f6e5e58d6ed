"""Honest baselines for the forecaster, and the held-out report that compares it with them.

Every forecast here is made at a *forecast origin*: ``end`` is the (exclusive) end of the
history, ``t = end - 1`` the last observed week, and the forecast covers ``y[end : end + H]``.
Three baselines, all computed on the same origins as the model:

* ``seasonal_naive_drift``: last year's value plus last year's change, one lump of drift
  for every step: ``y[t+h-52] + (y[t] - y[t-52])``.
* ``seasonal_naive_step_drift``: the last value, plus ``h`` steps of the drift per week
  measured over the last ``DRIFT_WEEKS``, plus last year's seasonal movement over the same ``h``
  weeks with last year's own trend taken out. Exact on a linear trend with an exact yearly
  season, like the first form, but its trend is the slope of three years rather than one.
* a ridge regression on the last ``RIDGE_WINDOW`` weeks relative to the last value (inputs:
  those weeks minus ``y[t]``; targets: the next ``H`` weeks minus ``y[t]``), its penalty chosen
  on the validation weeks and fitted on origins whose targets lie in the training weeks only.

The report splits the horizon into 13-week bands, because one overall MAE hides where a
model loses: near the origin, where the last value says most, or a year ahead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

SEASON = 52  # weeks per yearly cycle
DRIFT_WEEKS = 156  # weeks over which the per-step drift is measured (three years)
RIDGE_WINDOW = 156  # weeks of history the ridge regression reads (three years)
RIDGE_ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-2.0, 4.5, 0.5))  # penalties tried on validation
BAND_WEEKS = 13  # the horizon is reported in bands of this many weeks (a quarter)

Forecaster = Callable[[np.ndarray, list[int]], np.ndarray]  # (y, ends) -> forecasts (len(ends), H)


def origins(start: int, stop: int, horizon: int) -> list[int]:
    """History ends e (exclusive) with targets y[e : e + horizon] inside [start, stop)."""
    return list(range(start, stop - horizon + 1))


def targets(y: np.ndarray, ends: list[int], horizon: int) -> np.ndarray:
    """The truth at each origin: (len(ends), horizon)."""
    return np.stack([y[e : e + horizon] for e in ends])


# --- seasonal naive ----------------------------------------------------------------------------


def seasonal_naive_drift(y: np.ndarray, end: int, horizon: int) -> np.ndarray:
    """Last year's value plus last year's change: y[t+h-52] + (y[t] - y[t-52]), t = end - 1."""
    assert horizon <= SEASON, f"the baseline needs horizon <= {SEASON}, got {horizon}"
    t = end - 1
    h = np.arange(1, horizon + 1)
    return y[t + h - SEASON] + (y[t] - y[t - SEASON])


def seasonal_naive_step_drift(y: np.ndarray, end: int, horizon: int) -> np.ndarray:
    """y[t] + h * drift + (last year's movement over h weeks, less last year's own trend).

    ``drift`` is the mean change per week over the last ``DRIFT_WEEKS``; the seasonal term is
    ``y[t+h-52] - y[t-52] - h * (y[t] - y[t-52]) / 52``.
    """
    assert horizon <= SEASON, f"the baseline needs horizon <= {SEASON}, got {horizon}"
    t = end - 1
    h = np.arange(1, horizon + 1)
    drift = (y[t] - y[t - DRIFT_WEEKS]) / DRIFT_WEEKS
    last_year_slope = (y[t] - y[t - SEASON]) / SEASON
    season = y[t + h - SEASON] - y[t - SEASON] - h * last_year_slope
    return y[t] + h * drift + season


def seasonal_forecasts(baseline: Callable[..., np.ndarray], horizon: int) -> Forecaster:
    """A per-origin baseline as a forecaster over many origins."""
    return lambda y, ends: np.stack([baseline(y, e, horizon) for e in ends])


# --- ridge on the last weeks, relative to the last value ---------------------------------------


def ridge_design(y: np.ndarray, ends: list[int], window: int) -> np.ndarray:
    """Inputs (len(ends), window): the last ``window`` values minus the last value."""
    return np.stack([y[e - window : e] - y[e - 1] for e in ends])


def ridge_solve(x: np.ndarray, z: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights (D, H), intercept (H,)) minimising |z - intercept - x @ weights|^2 + alpha |weights|^2.

    The intercept is not penalised (inputs and targets are centred first).
    """
    x_mean, z_mean = x.mean(0), z.mean(0)
    xc, zc = x - x_mean, z - z_mean
    weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ zc)
    return weights, z_mean - x_mean @ weights


@dataclass(frozen=True)
class RidgeBaseline:
    """A fitted ridge: forecast = y[t] + intercept + (last window - y[t]) @ weights."""

    weights: np.ndarray  # (window, H)
    intercept: np.ndarray  # (H,): not penalised, so the mean growth needs no large weights
    alpha: float  # the penalty, chosen on validation weeks
    window: int
    n_train_origins: int

    @classmethod
    def fit(cls, y: np.ndarray, ends: list[int], horizon: int, window: int, alpha: float) -> RidgeBaseline:
        """Least squares with an L2 penalty ``alpha`` on the weights, on the given origins."""
        x = ridge_design(y, ends, window)
        z = targets(y, ends, horizon) - y[np.array(ends) - 1][:, None]
        weights, intercept = ridge_solve(x, z, alpha)
        return cls(weights, intercept, alpha, window, len(ends))

    def predict(self, y: np.ndarray, ends: list[int]) -> np.ndarray:
        """Forecasts (len(ends), H) in the series' units."""
        last = y[np.array(ends) - 1][:, None]
        return last + self.intercept + ridge_design(y, ends, self.window) @ self.weights


def fit_ridge(
    y: np.ndarray, val_start: int, test_start: int, horizon: int, window: int = RIDGE_WINDOW
) -> RidgeBaseline:
    """The ridge whose penalty gives the lowest MAE on the validation weeks.

    Each candidate is fitted on the origins whose targets end before ``val_start`` (the
    training weeks) and scored on the validation origins; nothing at or after ``test_start``
    is read, so the test weeks cannot shape the baseline the model is judged against.
    """
    train_ends = list(range(window, val_start - horizon + 1))
    val_ends = origins(val_start, test_start, horizon)
    val_truth = targets(y, val_ends, horizon)
    fits = [RidgeBaseline.fit(y, train_ends, horizon, window, alpha) for alpha in RIDGE_ALPHAS]
    errors = [float(np.abs(ridge.predict(y, val_ends) - val_truth).mean()) for ridge in fits]
    return fits[int(np.argmin(errors))]


# --- the report ----------------------------------------------------------------------------------


def bands(horizon: int, width: int = BAND_WEEKS) -> list[tuple[str, slice]]:
    """(name, step slice) for each band of the horizon: ("weeks_1_13", slice(0, 13)), ..."""
    return [
        (f"weeks_{lo + 1}_{min(lo + width, horizon)}", slice(lo, min(lo + width, horizon)))
        for lo in range(0, horizon, width)
    ]


def baseline_forecasts(
    y: np.ndarray, ends: list[int], horizon: int, val_start: int, test_start: int
) -> tuple[dict[str, np.ndarray], RidgeBaseline]:
    """Each baseline's forecasts at ``ends`` (name -> (len(ends), H)), and the fitted ridge."""
    ridge = fit_ridge(y, val_start, test_start, horizon)
    forecasts = {
        "seasonal_naive_drift": seasonal_forecasts(seasonal_naive_drift, horizon)(y, ends),
        "seasonal_naive_step_drift": seasonal_forecasts(seasonal_naive_step_drift, horizon)(y, ends),
        "ridge": ridge.predict(y, ends),
    }
    return forecasts, ridge


def comparison_metrics(
    model_forecasts: np.ndarray, baselines: dict[str, np.ndarray], truth: np.ndarray, split: str = "test"
) -> dict[str, Any]:
    """Flat metrics: model MAE and bias overall and per band, each baseline's, and the ratios.

    Ratios are model MAE / baseline MAE (below 1: the model is better). Bias is the mean
    signed error, forecast minus truth (negative: the model forecasts too low). ``split`` names
    the weeks: the test weeks' keys are ``test_mae``, ``baseline_mae_ridge``,
    ``mae_ratio_to_ridge``, ...; another split's carry its name in front (``val_mae``,
    ``val_baseline_mae_ridge``, ``val_mae_ratio_to_ridge``, ...).
    """
    lead = "" if split == "test" else f"{split}_"
    horizon = truth.shape[1]
    error = model_forecasts - truth
    metrics: dict[str, Any] = {
        f"{split}_mae": round(float(np.abs(error).mean()), 4),
        f"{split}_bias": round(float(error.mean()), 4),
    }
    for band, steps in bands(horizon):
        metrics[f"{split}_mae_{band}"] = round(float(np.abs(error[:, steps]).mean()), 4)
        metrics[f"{split}_bias_{band}"] = round(float(error[:, steps].mean()), 4)
    model_mae = np.abs(error).mean()
    for name, forecast in baselines.items():
        base_error = np.abs(forecast - truth)
        metrics[f"{lead}baseline_mae_{name}"] = round(float(base_error.mean()), 4)
        metrics[f"{lead}mae_ratio_to_{name}"] = round(float(model_mae / base_error.mean()), 4)
        for band, steps in bands(horizon):
            metrics[f"{lead}baseline_mae_{name}_{band}"] = round(float(base_error[:, steps].mean()), 4)
            ratio = np.abs(error[:, steps]).mean() / base_error[:, steps].mean()
            metrics[f"{lead}mae_ratio_to_{name}_{band}"] = round(float(ratio), 4)
    metrics[f"{split}_steps_biased_low"] = int((error.mean(0) < 0).sum())  # of the H steps
    return metrics


def held_out_comparison(
    model: Forecaster, y: np.ndarray, val_start: int, test_start: int, horizon: int
) -> dict[str, Any]:
    """The model against every baseline on the test origins: metrics for the manifest."""
    ends = origins(test_start, len(y), horizon)
    truth = targets(y, ends, horizon)
    forecasts, ridge = baseline_forecasts(y, ends, horizon, val_start, test_start)
    metrics = comparison_metrics(model(y, ends), forecasts, truth)
    metrics.update(
        ridge_alpha=ridge.alpha, ridge_window=ridge.window, ridge_train_origins=ridge.n_train_origins
    )
    return metrics


def validation_comparison(
    model: Forecaster, y: np.ndarray, val_start: int, test_start: int, horizon: int
) -> dict[str, Any]:
    """The same comparison on the validation origins (reported; the test weeks are not read)."""
    ends = origins(val_start, test_start, horizon)
    forecasts, _ = baseline_forecasts(y, ends, horizon, val_start, test_start)
    return comparison_metrics(model(y, ends), forecasts, targets(y, ends, horizon), split="val")
