"""``python -m training.forecaster_backtest``: the rolling-origin backtest the forecaster's recipe
is chosen on, without reading a test week.

One validation split of two years is too noisy to choose on (a candidate chosen on 1998-1999
alone met the goal there and missed even the bar on the test weeks). So the whole trainer is
rerun at earlier cut-offs: fold ``j`` is the series truncated by ``j`` years (``y[: n - 52 j]``),
split as the trainer splits it (its last 104 weeks are the fold's evaluation weeks, the 104
before them its validation weeks, the rest its training weeks). Folds ``j = 2 .. 13`` evaluate
1987-1988 to 1998-1999 (``j = 2``: the trainer's own validation weeks); none reads a week of the
test window. In each fold the ridge baseline is fitted by its own rule
(:func:`training.forecast_baselines.fit_ridge`) and each candidate on the fold's training weeks,
both scored on the fold's 53 evaluation origins, overall and per 13-week band.

``--gru`` adds the default recipe, the GRU trained by :mod:`training.train_forecaster` (its epoch
and history window chosen on each fold's validation weeks, about 90 s a fold), and the mean of its
forecasts and the ridge's. Two *bounds* are printed under the candidates: the ridge with its own
mean error over the evaluated window removed, per window and per window and step. They read the
evaluated weeks, so they are not candidates; they say how much of the ridge's error is a shared
offset over a window (mostly a growth rate that changed from its past) that a perfect estimate of
the coming growth would remove.

The criterion, fixed before any candidate was run: ``score`` is the mean over folds of the
candidate's MAE / the ridge's MAE; ``band`` scores are the same per band. A candidate is
eligible if every band score is at most ``BAND_LIMIT`` (a margin under the goal's 1.0); the
recipe is the eligible candidate with the lowest score.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.forecast_baselines import SEASON, bands, fit_ridge, origins, targets
from training.forecast_baselines import Forecaster as Forecasts  # (y, ends) -> (len(ends), H)
from training.linear_forecast import LinearRecipe, linear_forecasts, prior_matrix

HORIZON = 52
FOLDS = tuple(range(2, 14))  # years cut off the end of the series; j >= 2 keeps the test weeks out
EVAL_WEEKS = 104  # per fold, like the trainer's test and validation windows
BAND_LIMIT = 0.95  # eligible: every band's mean ratio to the ridge at most this
ALPHAS = (1e-2, 1e1, 1e2, 1e3, 1e4, 1e5)


Trainer = Callable[[np.ndarray], Forecasts]  # a fold's series -> forecasts of the model trained on it


def candidates() -> list[LinearRecipe]:
    """The candidates: round 1, fixed before the backtest was first run, then round 2, fixed after
    round 1's figures (no candidate of round 1 was eligible; all were biased low)."""
    plain = [LinearRecipe(0, window, alpha) for window in (104, 156, 260) for alpha in ALPHAS]
    shrunk = [LinearRecipe(years, 156, alpha) for years in (2, 3, 5) for alpha in (*ALPHAS, math.inf)]
    anchored = [
        LinearRecipe(years, 156, alpha, anchored=True)
        for years in (1, 2, 3)
        for alpha in (1e1, 1e2, 1e3, 1e4, math.inf)
    ]
    recent = [LinearRecipe(0, 156, alpha, recent_years=n) for n in (10, 20) for alpha in (1e1, 1e2, 1e3)]
    return plain + shrunk + anchored + recent


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


def gru_trainer(cfg: Any = None, seed: int = 0) -> Trainer:
    """The GRU recipe as a backtest candidate: train on a fold's series exactly as
    ``python -m training`` trains on the whole one (same split rule; the epoch, then the history
    window, chosen on the fold's validation weeks), then forecast from each origin's history."""
    # torch and the trainer only when a GRU is backtested (the trainer imports this module)
    from training.common import seed_everything, torch_threads
    from training.models.forecaster import Forecaster, ForecasterConfig
    from training.train_forecaster import ForecasterTrainConfig, choose_window, fit, forecast

    cfg = cfg or ForecasterTrainConfig()

    def train(yj: np.ndarray) -> Forecasts:
        with torch_threads(cfg.threads):
            seed_everything(seed)
            model_cfg = ForecasterConfig(min_length=cfg.min_window)
            model = Forecaster(model_cfg)
            fit(model, yj, cfg, np.random.default_rng(seed), model_cfg.max_length)
            window, _ = choose_window(model, yj, cfg)
        return lambda y, ends: forecast(model, y, ends, window, cfg.eval_batch)

    return train


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


def main(argv: list[str] | None = None) -> int:
    from training.train_forecaster import load_series  # statsmodels: only when run

    parser = argparse.ArgumentParser(prog="python -m training.forecaster_backtest", description=__doc__)
    parser.add_argument("--json", type=Path, default=None, help="also write every fold's figures here")
    parser.add_argument(
        "--gru",
        action="store_true",
        help="also train the GRU recipe in every fold (about 90 s a fold)",
    )
    args = parser.parse_args(argv)
    y = load_series()[1]
    recipes = candidates()
    trainers = {"gru (the default recipe)": gru_trainer()} if args.gru else None
    scores = backtest(y, recipes, trainers=trainers)
    summaries = {name: summary(folds) for name, folds in scores.items()}
    names = [band for band, _ in bands(HORIZON)]
    width = max(map(len, summaries)) + 2
    print(
        f"{'candidate':<{width}}{'score':>7}{'pooled':>8}"
        + "".join(f"{b[6:]:>8}" for b in names)
        + f"{'worst':>7}{'goal':>6}{'bias':>8}"
    )

    def row(name: str, s: dict[str, Any]) -> str:
        return (
            f"{name:<{width}}{s['score']:>7.3f}{s['pooled']:>8.3f}"
            + "".join(f"{s['bands'][b]:>8.3f}" for b in names)
            + f"{s['worst_fold']:>7.3f}{s['folds_meeting_goal']:>3}/{len(FOLDS):<2}{s['bias']:>+8.3f}"
            + ("" if s["eligible"] else f"  (band > {BAND_LIMIT:.2f})")
        )

    ranked = sorted(summaries.items(), key=lambda item: item[1]["score"])
    for name, s in ranked:
        if name not in BOUNDS:
            print(row(name, s))
    print("bounds (they read the evaluated weeks; not candidates):")
    for name, s in ranked:
        if name in BOUNDS:
            print(row(name, s))
    trained = [n for name in trainers or {} for n in (name, f"mean of {name} and the ridge")]
    chosen = choose(summaries, [r.name for r in recipes] + trained)
    print(f"chosen: {chosen}")
    if args.json:
        record = {name: [vars(f) for f in folds] for name, folds in scores.items()}
        record = {"summaries": summaries, "folds": record, "chosen": chosen}
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
