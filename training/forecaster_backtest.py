"""``python -m training.forecaster_backtest``: the rolling-origin backtest the forecaster's recipe
is chosen on, without reading a test week.

One validation split of two years is too noisy to choose on (a candidate chosen on 1998-1999
alone met the goal there and missed even the bar on the test weeks). So the whole trainer is
rerun at earlier cut-offs: the twelve folds of :mod:`training.backtest_folds` (1987-1988 to
1998-1999, none reading a week of the test window), where each candidate and the ridge baseline
are fitted on the fold's training weeks and scored on its 53 evaluation origins, overall and per
13-week band. This command is the one place that runs trainers in the folds; the trainer itself
only scores a fitted recipe there, so the two modules do not import each other.

``--gru`` adds the default recipe, the GRU trained by :mod:`training.train_forecaster` (its epoch
and history window chosen on each fold's validation weeks, about 90 s a fold), and the mean of its
forecasts and the ridge's; ``--residual`` adds the residual recipe (the ridge baseline plus GRUs
trained on its out-of-fold errors, :mod:`training.residual_fit`, about 60 s a fold) and its mean
with the ridge. For each trained candidate the command also prints how many folds it wins and
loses against the ridge with a sign test, and ``--plot`` draws its ratio fold by fold. Two *bounds*
are printed under the candidates: the ridge with its own
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
from pathlib import Path
from typing import Any

import numpy as np

from training.backtest_folds import (
    BAND_LIMIT,
    BOUNDS,
    EVAL_WEEKS,
    FOLDS,
    HORIZON,
    FoldScore,
    Forecasts,
    Trainer,
    backtest,
    choose,
    summary,
)
from training.common import seed_everything, torch_threads
from training.forecast_baselines import bands
from training.linear_forecast import LinearRecipe
from training.models.forecaster import Forecaster, ForecasterConfig
from training.residual_fit import ResidualFitConfig, fit_residual
from training.train_forecaster import ForecasterTrainConfig, choose_window, fit, forecast, load_series

ALPHAS = (1e-2, 1e1, 1e2, 1e3, 1e4, 1e5)
GRU = "gru (forecaster/2's recipe)"
RESIDUAL = "residual: the ridge + GRUs on its errors"


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


def gru_trainer(cfg: Any = None, seed: int = 0) -> Trainer:
    """The GRU recipe as a backtest candidate: train on a fold's series exactly as
    ``python -m training`` trains on the whole one (same split rule; the epoch, then the history
    window, chosen on the fold's validation weeks), then forecast from each origin's history."""
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


def residual_trainer(cfg: ResidualFitConfig | None = None, seed: int = 0) -> Trainer:
    """The residual recipe as a backtest candidate: fitted on a fold's series exactly as
    ``python -m training`` fits it on the whole one (the ridge, then the GRUs on its out-of-fold
    errors, their step and shrink chosen on the fold's validation weeks)."""
    cfg = cfg or ForecasterTrainConfig().residual
    threads = ForecasterTrainConfig().threads

    def train(yj: np.ndarray) -> Forecasts:
        test_start = len(yj) - EVAL_WEEKS
        with torch_threads(threads):
            model, _ = fit_residual(yj, test_start - EVAL_WEEKS, test_start, cfg, seed)
        return lambda y, ends: forecast(model, y, ends, model.config.window)

    return train


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value of ``wins`` against ``losses`` (ties left out) if either were equally likely."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def paired(scores: dict[str, list[FoldScore]], name: str, other: str | None) -> str:
    """``name`` against the ridge (or against ``other``) fold by fold: wins, losses, sign test."""
    mine = [f.mae for f in scores[name]]
    theirs = [f.ridge_mae for f in scores[name]] if other is None else [f.mae for f in scores[other]]
    wins = sum(a < b for a, b in zip(mine, theirs, strict=True))
    losses = sum(a > b for a, b in zip(mine, theirs, strict=True))
    against = "the ridge" if other is None else other
    return (
        f"{name} vs {against}: better in {wins} of {len(mine)} folds, worse in {losses}, "
        f"sign test p = {sign_test(wins, losses):.3f}"
    )


def plot_folds(scores: dict[str, list[FoldScore]], names: list[str], path: Path) -> None:
    """Each named candidate's MAE ratio to the ridge per fold (the year its evaluated weeks start)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name in names:
        folds = scores[name]
        ax.plot([2001 - f.fold - 1 for f in folds], [f.ratio for f in folds], "o-", label=name)
    ax.axhline(1.0, color="black", lw=1, ls="--", label="the ridge")
    ax.set_xlabel("first evaluated year of the fold")
    ax.set_ylabel("MAE / the ridge's MAE")
    ax.set_title("the backtest fold by fold (below 1: better than the ridge)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.forecaster_backtest", description=__doc__)
    parser.add_argument("--json", type=Path, default=None, help="also write every fold's figures here")
    parser.add_argument(
        "--gru",
        action="store_true",
        help="also train the GRU recipe in every fold (about 90 s a fold)",
    )
    parser.add_argument(
        "--residual",
        action="store_true",
        help="also fit the residual recipe (the ridge, GRUs on its errors) in every fold (about 60 s a fold)",
    )
    parser.add_argument("--plot", type=Path, default=None, help="plot the trained candidates' folds here")
    args = parser.parse_args(argv)
    y = load_series()[1]
    recipes = candidates()
    trainers: dict[str, Trainer] = {}
    if args.gru:
        trainers[GRU] = gru_trainer()
    if args.residual:
        trainers[RESIDUAL] = residual_trainer()
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
    for name in trainers:
        print(paired(scores, name, None))
    if GRU in trainers and RESIDUAL in trainers:
        print(paired(scores, RESIDUAL, GRU))
    if args.plot and trainers:
        plot_folds(scores, list(trainers), args.plot)
    if args.json:
        record = {name: [vars(f) for f in folds] for name, folds in scores.items()}
        record = {"summaries": summaries, "folds": record, "chosen": chosen}
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
