"""The rolling-origin backtest's folds and scores, shared by the trainer and the backtest command.

Fold ``j`` is the series truncated by ``j`` years (``y[: n - 52 j]``), split as the trainer splits
it: its last 104 weeks are the fold's evaluation weeks, the 104 before them its validation weeks,
the rest its training weeks. Folds ``j = 2 .. 13`` evaluate 1987-1988 to 1998-1999; none reads a
week of the test window. In each fold the ridge baseline is fitted by its own rule
(:func:`training.forecast_baselines.fit_ridge`) and each candidate on the fold's training weeks,
both scored on the fold's 53 evaluation origins, overall and per 13-week band.

This module knows nothing of any trainer: a trained candidate comes in as a ``Trainer`` (a fold's
series -> forecasts), so :mod:`training.train_forecaster` can score its recipe here and
:mod:`training.forecaster_backtest` (the command) can run the trainer in every fold, and neither
imports the other's caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.forecast_baselines import SEASON, bands, fit_ridge, origins, targets
from training.forecast_baselines import Forecaster as Forecasts  # (y, ends) -> (len(ends), H)
from training.linear_forecast import LinearRecipe, linear_forecasts, prior_matrix

HORIZON = 52
FOLDS = tuple(range(2, 14))  # years cut off the end of the series; j >= 2 keeps the test weeks out
EVAL_WEEKS = 104  # per fold, like the trainer's test and validation windows
BAND_LIMIT = 0.95  # eligible: every band's mean ratio to the ridge at most this

Trainer = Callable[[np.ndarray], Forecasts]  # a fold's series -> forecasts of the model trained on it


def fold_series(y: np.ndarray, j: int) -> np.ndarray:
    """The series as the trainer would have seen it ``j`` years earlier."""
    return y[: len(y) - SEASON * j]


@dataclass
class FoldScore:
    fold: int
    mae: float
    ridge_mae: float
    band_mae: dict[str, float]
    ridge_band_mae: dict[str, float]
    bias: float

    @property
    def ratio(self) -> float:
        return self.mae / self.ridge_mae

    def band_ratio(self, band: str) -> float:
        return self.band_mae[band] / self.ridge_band_mae[band]


def score_fold(forecasts: np.ndarray, ridge: np.ndarray, truth: np.ndarray, fold: int) -> FoldScore:
    error, ridge_error = np.abs(forecasts - truth), np.abs(ridge - truth)
    return FoldScore(
        fold,
        float(error.mean()),
        float(ridge_error.mean()),
        {band: float(error[:, steps].mean()) for band, steps in bands(HORIZON)},
        {band: float(ridge_error[:, steps].mean()) for band, steps in bands(HORIZON)},
        float((forecasts - truth).mean()),
    )


BOUNDS = (
    "bound: ridge less its window's mean error",
    "bound: ridge less its window's mean error per step",
)


def bounds(ridge: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """The ridge less its own mean error over the evaluated window (these read the truth)."""
    error = ridge - truth  # (O, H)
    return dict(zip(BOUNDS, (ridge - error.mean(), ridge - error.mean(0)), strict=True))


def backtest(
    y: np.ndarray,
    recipes: list[LinearRecipe],
    folds=FOLDS,
    trainers: dict[str, Trainer] | None = None,
) -> dict[str, list[FoldScore]]:
    """Each candidate's score in each fold (name -> folds): the linear ``recipes``, the models of
    ``trainers`` (name -> trainer) and their mean with the ridge, the pure priors and the bounds."""
    scores: dict[str, list[FoldScore]] = {}
    test_start = len(y) - EVAL_WEEKS
    for j in folds:
        yj = fold_series(y, j)
        assert len(yj) <= test_start, "a fold must not read the test weeks"
        eval_start = len(yj) - EVAL_WEEKS
        val_start = eval_start - EVAL_WEEKS
        ends = origins(eval_start, len(yj), HORIZON)
        truth = targets(yj, ends, HORIZON)
        ridge = fit_ridge(yj, val_start, eval_start, HORIZON).predict(yj, ends)
        for recipe in recipes:
            train_ends = list(range(recipe.window, val_start - HORIZON + 1))
            weight, bias = recipe.fit(yj, train_ends, HORIZON)
            forecasts = linear_forecasts(weight, bias, yj, ends)
            scores.setdefault(recipe.name, []).append(score_fold(forecasts, ridge, truth, j))
        for years in (2, 3, 5):  # references: the prior alone, nothing fitted
            prior = prior_matrix(years, SEASON * (years + 1), HORIZON)
            forecasts = linear_forecasts(prior, np.zeros(HORIZON), yj, ends)
            name = f"prior(years={years}) alone"
            scores.setdefault(name, []).append(score_fold(forecasts, ridge, truth, j))
        for name, train in (trainers or {}).items():
            forecasts = train(yj)(yj, ends)
            scores.setdefault(name, []).append(score_fold(forecasts, ridge, truth, j))
            mean = f"mean of {name} and the ridge"
            scores.setdefault(mean, []).append(score_fold((forecasts + ridge) / 2, ridge, truth, j))
        for name, forecasts in bounds(ridge, truth).items():
            scores.setdefault(name, []).append(score_fold(forecasts, ridge, truth, j))
    return scores


def summary(folds: list[FoldScore]) -> dict[str, Any]:
    names = [band for band, _ in bands(HORIZON)]
    band_scores = {band: float(np.mean([f.band_ratio(band) for f in folds])) for band in names}
    meets = [f.ratio <= 0.85 and all(f.band_ratio(b) <= 1.0 for b in names) for f in folds]
    return {
        "score": float(np.mean([f.ratio for f in folds])),
        "bands": band_scores,
        "worst_band": max(band_scores.values()),
        "pooled": sum(f.mae for f in folds) / sum(f.ridge_mae for f in folds),
        "worst_fold": max(f.ratio for f in folds),
        "folds_meeting_goal": int(sum(meets)),
        "bias": float(np.mean([f.bias for f in folds])),
        "eligible": max(band_scores.values()) <= BAND_LIMIT,
    }


def choose(summaries: dict[str, dict[str, Any]], names: list[str]) -> str:
    """The eligible candidate with the lowest score (the lowest score if none is eligible)."""
    eligible = [n for n in names if summaries[n]["eligible"]] or names
    return min(eligible, key=lambda n: summaries[n]["score"])
