"""The ridge plus a GRU that learns what the ridge leaves: one graph, one forecast.

``forecast = ridge + shrink * correction``:

* ``ridge`` is the baseline's own map (:class:`training.models.linear_forecaster.LinearForecaster`
  holding the weights of :func:`training.forecast_baselines.fit_ridge`): the next ``horizon``
  weeks as a linear map of the last ``window`` weeks, measured from the last value;
* ``correction`` is a GRU over the same ``window`` weeks, read in steps of ``chunk`` weeks (a
  step sees ``chunk`` values and their changes over one season), whose last state and the
  ridge's own forecast go through a small MLP to ``horizon`` offsets in ppm. It is trained on
  what a ridge fitted without those weeks got wrong (out-of-fold residuals), so it learns the
  ridge's out-of-sample errors rather than its in-sample ones;
* ``shrink`` (a buffer, 0..1) is chosen on the validation weeks with the training epoch. At 0
  the model is the ridge exactly, so a correction that does not help there is switched off.

Rows shorter than ``window`` (at least ``min_length``) are extended back by whole seasons as
the linear forecaster does; the GRU then reads a fixed ``window`` weeks, so the graph has no
time axis of its own beyond the gather, and padding never matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.models.linear_forecaster import LinearForecaster, LinearForecasterConfig


@dataclass
class ResidualForecasterConfig:
    horizon: int = 52  # H: weeks forecast after the last valid value
    season: int = 52  # weeks in the yearly cycle: the lag of the yearly-change feature
    window: int = 156  # weeks the ridge and the GRU read (the ridge baseline's window)
    min_length: int = 104  # shortest history served: two seasons (see LinearForecaster)
    chunk: int = 4  # weeks per GRU step: 156 weeks are 39 steps
    scale: float = 2.0  # ppm per model unit of the values (measured from the last value)
    growth_mean: float = 1.5  # ppm: typical change over one season, subtracted from the feature
    growth_scale: float = 1.0  # ppm per model unit of the yearly-change feature
    n_embd: int = 32  # GRU hidden size and MLP width
    residual_scale: float = 0.5  # ppm per unit of the MLP's output
    members: int = 3  # GRUs trained from different seeds; the correction is their mean


class ResidualNet(nn.Module):
    """One member of the correction: a GRU over the window in chunks, then an MLP."""

    def __init__(self, config: ResidualForecasterConfig) -> None:
        super().__init__()
        C, H = config.n_embd, config.horizon
        self.gru = nn.GRU(2 * config.chunk, C, num_layers=1, batch_first=True)
        self.head = nn.Sequential(nn.Linear(C + H, C), nn.GELU(), nn.Linear(C, H))
        # the correction starts at zero, so training starts from the ridge itself
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, steps: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """steps (B, W / chunk, 2 chunk), base (B, H) in model units -> (B, H) in MLP units."""
        out, _ = self.gru(steps)  # (B, W / chunk, C)
        return self.head(torch.cat([out[:, -1], base], dim=-1))  # (B, H)


class ResidualForecaster(nn.Module):
    def __init__(self, config: ResidualForecasterConfig) -> None:
        super().__init__()
        assert config.window % config.chunk == 0, (
            f"window ({config.window}) must be a whole number of chunks ({config.chunk})"
        )
        assert config.window > config.season, "the yearly-change feature needs more than one season"
        self.config = config
        self.ridge = LinearForecaster(
            LinearForecasterConfig(config.horizon, config.season, config.window, config.min_length)
        )
        self.nets = nn.ModuleList(ResidualNet(config) for _ in range(config.members))
        self.register_buffer("shrink", torch.ones(()))

    def steps(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, window) in ppm from the last value -> the GRU's input (B, W / chunk, 2 chunk):
        each week's value and its change over the season before (0 in the first season)."""
        cfg = self.config
        B, W, S = x.shape[0], cfg.window, cfg.season
        growth = F.pad(x[:, S:] - x[:, :-S] - cfg.growth_mean, (S, 0)) / cfg.growth_scale  # (B, W)
        feats = torch.stack([x / cfg.scale, growth], dim=-1)  # (B, W, 2)
        return feats.reshape(B, W // cfg.chunk, 2 * cfg.chunk)

    def member_corrections(self, x: torch.Tensor, base: torch.Tensor) -> list[torch.Tensor]:
        """Each member's correction (B, H) in ppm; x (B, window) and base (B, H): the last weeks
        and the ridge's forecast, both in ppm from the last value."""
        steps, base = self.steps(x), base / self.config.scale
        return [self.config.residual_scale * net(steps, base) for net in self.nets]

    def correction(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """The members' mean correction (B, H) in ppm."""
        return torch.stack(self.member_corrections(x, base)).mean(0)

    def parts(self, history: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(last (B, 1), the ridge's forecast from the last value (B, H), the correction (B, H))."""
        last, x = self.ridge.recent(history, lengths)  # (B, 1), (B, window)
        base = self.ridge.bias[None, :] + x @ self.ridge.weight  # (B, H)
        return last, base, self.correction(x, base)

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """history (B, T) float ppm, right-padded; lengths (B,) int64 -> forecast (B, H) ppm."""
        assert history.dim() == 2, f"history must be (batch, time), got {tuple(history.shape)}"
        assert lengths.dim() == 1, f"lengths must be (batch,), got {tuple(lengths.shape)}"
        last, base, correction = self.parts(history, lengths)
        return last + base + self.shrink * correction  # (B, H) ppm
