"""How the linear forecaster's map is fitted: a ridge shrunk towards a seasonal prior.

Every forecast here is ``y[t] + bias + (last window weeks - y[t]) @ weight`` (the form of
:class:`training.models.linear_forecaster.LinearForecaster`). ``weight`` is the sum of two parts:

* the **prior**, fixed (no parameter fitted): each of the last ``prior_years`` years' value of
  the same week, moved forward by as many years of growth, averaged; the growth per week is the
  change of the one-season mean over those years. It is exact on a linear trend with an exact
  yearly season, and it averages ``prior_years`` weeks of noise where a seasonal naive forecast
  reads one;
* a **ridge correction** on the last ``ridge_window`` weeks, fitted by least squares with the
  penalty ``alpha`` on the origins whose targets lie in the training weeks, on what the prior
  misses (``alpha = inf``: the intercept only). A strong penalty keeps the forecast near the
  prior; a weak one is the ridge baseline of :mod:`training.forecast_baselines` with a prior.

``prior_years = 0`` has no prior: the plain ridge on the last ``window`` weeks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.forecast_baselines import SEASON, ridge_design, ridge_solve, targets


@dataclass(frozen=True)
class LinearRecipe:
    """What defines a linear forecaster; ``fit`` turns it and a series into a map."""

    prior_years: int  # years the prior averages over (0: no prior)
    ridge_window: int  # last weeks the ridge correction reads
    alpha: float  # the correction's penalty (math.inf: intercept only)
    anchored: bool = False  # the prior starts from the last value (see prior_matrix)
    recent_years: int = 0  # fit on the training origins of the last this many years only (0: all)

    @property
    def window(self) -> int:
        """Weeks the map reads: what the prior needs, or the ridge's window if longer."""
        return max(prior_weeks(self.prior_years, self.anchored), self.ridge_window)

    @property
    def name(self) -> str:
        alpha = "inf" if math.isinf(self.alpha) else f"{self.alpha:g}"
        ridge = f"ridge(window={self.ridge_window}, alpha={alpha})"
        recent = f" on the last {self.recent_years} years" if self.recent_years else ""
        if not self.prior_years:
            return ridge + recent
        kind = "anchored prior" if self.anchored else "prior"
        return f"{kind}(years={self.prior_years}) + {ridge}{recent}"

    def fitted_origins(self, ends: list[int]) -> list[int]:
        """The origins among ``ends`` the map is fitted on: the last ``recent_years`` years' (or all)."""
        if not self.recent_years:
            return list(ends)
        return [e for e in ends if e > max(ends) - SEASON * self.recent_years]

    def fit(self, y: np.ndarray, ends: list[int], horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """(weight (window, H), bias (H,)) fitted on the origins ``ends`` (each history at least
        ``window`` weeks, every target week inside the weeks meant for training)."""
        W, R = self.window, self.ridge_window
        ends = self.fitted_origins(ends)
        prior = prior_matrix(self.prior_years, W, horizon, anchored=self.anchored)
        x = ridge_design(y, ends, W)  # (O, W) ppm from the last value
        z = targets(y, ends, horizon) - y[np.array(ends) - 1][:, None] - x @ prior  # what the prior misses
        weight = prior.copy()
        if math.isinf(self.alpha):
            return weight, z.mean(0)
        correction, bias = ridge_solve(x[:, W - R :], z, self.alpha)
        weight[W - R :] += correction
        return weight, bias


def prior_weeks(years: int, anchored: bool, season: int = SEASON) -> int:
    """Weeks of history the prior reads."""
    if not years:
        return 0
    return season * years + 1 if anchored else season * (years + 1)


def prior_matrix(
    years: int, window: int, horizon: int, season: int = SEASON, anchored: bool = False
) -> np.ndarray:
    """(window, H): prior_h = sum_i c[i, h] * y_i over the window (oldest first), where

    ``prior_h = mean over k = 1..years of (y[t + h - season k] + season k g)`` and ``g`` is the change
    per week of the one-season mean over ``years`` years; or, ``anchored``, the last value plus the
    past years' average movement over the same ``h`` weeks:
    ``prior_h = y[t] + mean over k = 1..years of (y[t + h - season k] - y[t - season k])``.
    Each column sums to 1, so the same map applies to values measured from the last one.
    ``years = 0``: all zeros (no prior).
    """
    c = np.zeros((window, horizon))
    if not years:
        return c
    if anchored:
        assert horizon <= season and window >= season * years + 1, "the prior needs years seasons + 1"
        t = window - 1
        c[t] += 1.0
        for k in range(1, years + 1):
            c[t - season * k] -= 1.0 / years
            for h in range(1, horizon + 1):
                c[t + h - season * k, h - 1] += 1.0 / years
        return c
    assert horizon <= season and window >= season * (years + 1), "the prior needs years + 1 seasons"
    t = window - 1
    # season * mean(k) * g, where g = (mean of the last season - mean of the season `years` back)
    # / (season * years), spread over the season's weeks of each mean
    growth = season * (years + 1) / 2 / (season * years) / season
    for h in range(1, horizon + 1):
        for k in range(1, years + 1):
            c[t + h - season * k, h - 1] += 1.0 / years
    c[window - season :] += growth
    c[window - season * (years + 1) : window - season * years] -= growth
    return c


def linear_forecasts(weight: np.ndarray, bias: np.ndarray, y: np.ndarray, ends: list[int]) -> np.ndarray:
    """The map's forecasts (len(ends), H) in float64, from histories at least ``len(weight)`` long."""
    last = y[np.array(ends) - 1][:, None]
    return last + bias + ridge_design(y, ends, len(weight)) @ weight
