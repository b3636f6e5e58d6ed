"""A linear forecaster: the next ``horizon`` weeks as a linear map of the last ``window`` weeks.

``forecast = last + bias + (recent - last) @ weight``, where ``recent`` is the row's last
``window`` valid values and ``last`` its last one. Every input and target is measured from the
last value, so the map works at any level of the rising trend, like the ridge baseline of
:mod:`training.forecast_baselines`; the weights are fitted in closed form by the trainer (they
are buffers of this module, not trained by gradient descent).

A row shorter than ``window`` (but at least ``min_length``, two seasons) is extended back by
whole seasons: a missing week is the same week one or more seasons later, less that many
seasons of the growth the row shows over its last year (the change of the one-season mean).
Rows at least ``window`` long are read as they are.

Padding never matters: every index is gathered from the row's own valid prefix, so a row gives
the same forecast alone as in any right-padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LinearForecasterConfig:
    horizon: int = 52  # H: weeks forecast after the last valid value
    season: int = 52  # weeks in the yearly cycle: the step of the extension back
    window: int = 156  # weeks the map reads; longer histories are cut to their last window weeks
    min_length: int = 104  # shortest history served: two seasons, so the growth used to extend exists


class LinearForecaster(nn.Module):
    def __init__(self, config: LinearForecasterConfig) -> None:
        super().__init__()
        assert config.min_length >= 2 * config.season, (
            f"min_length ({config.min_length}) must cover two seasons ({2 * config.season})"
        )
        assert config.window >= config.min_length, (
            f"window ({config.window}) must be at least min_length ({config.min_length})"
        )
        self.config = config
        self.register_buffer("weight", torch.zeros(config.window, config.horizon))  # (W, H)
        self.register_buffer("bias", torch.zeros(config.horizon))  # (H,) ppm

    def set_map(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Install a fitted map: weight (window, horizon) and bias (horizon,), any float dtype."""
        self.weight.copy_(weight.to(self.weight.dtype))
        self.bias.copy_(bias.to(self.bias.dtype))

    def recent(self, history: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last (B, 1), recent - last (B, window)): each row's last ``window`` values, in ppm from
        its last valid value, extended back by whole seasons where the row is shorter."""
        S, W, T = self.config.season, self.config.window, history.size(1)
        lengths = lengths.clamp(1, T)[:, None]  # (B, 1) a row is never read beyond its own tensor
        top = lengths - 1  # (B, 1) index of the last valid value
        last = history.gather(1, top)  # (B, 1)

        def mean_at(first: torch.Tensor) -> torch.Tensor:  # mean of S values from index ``first``
            idx = (first + torch.arange(S, device=history.device)[None, :]).clamp(min=0)
            return history.gather(1, torch.minimum(idx, top)).mean(1, keepdim=True)

        growth = (mean_at(lengths - S) - mean_at(lengths - 2 * S)) / S  # (B, 1) ppm per week
        pos = lengths - W + torch.arange(W, device=history.device)[None, :]  # (B, W) may be < 0
        seasons = torch.ceil((-pos).clamp(min=0).to(history.dtype) / S)  # (B, W) seasons moved
        idx = (pos + S * seasons.to(pos.dtype)).clamp(min=0)
        values = history.gather(1, torch.minimum(idx, top)) - S * seasons * growth  # (B, W)
        return last, values - last

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """history (B, T) float ppm, right-padded; lengths (B,) int64 -> forecast (B, H) ppm."""
        assert history.dim() == 2, f"history must be (batch, time), got {tuple(history.shape)}"
        assert lengths.dim() == 1, f"lengths must be (batch,), got {tuple(lengths.shape)}"
        last, x = self.recent(history, lengths)
        return last + self.bias[None, :] + x @ self.weight  # (B, H) ppm
