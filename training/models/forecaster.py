"""The forecaster: a linear forecast, corrected by a GRU over the history read out by horizon attention.

Input is a right-padded batch of raw series values (``history``, ppm) and each row's true
length (``lengths``); output is the next ``horizon`` values in the same units. Everything a
server would otherwise have to do lives in ``forward``:

1. per-row scaling: ``anchor`` is the mean of the row's last ``season`` valid values (a
   de-seasonalised level), and every feature is measured from the row's last valid value, so
   a model trained on 1960s levels works at any level of the rising trend;
2. the trend's growth per week: the change of the one-season mean over the last
   ``drift_span`` weeks (fewer when the row is shorter), so the forecast follows the growth
   the row shows instead of the average growth of the training years (which left the first
   version biased low at every step);
3. the linear part (a "highway", as in LSTNet and DLinear): the last value moved along that
   trend, plus a linear map of the last ``highway`` weeks with the trend taken out. It has a
   ridge regression's form, and the trainer starts it as one;
4. stationary per-step features: the value minus its trailing one-season mean (the seasonal
   residual) and the change since one season earlier (the yearly growth). Neither grows with
   the length of the history, so histories far longer than the training windows stay in
   distribution;
5. a GRU run left to right; its state at the last valid step summarises the recent dynamics;
6. one query per forecast step attends over the valid GRU outputs. Keys carry a periodic
   encoding of the lag from the last valid step (so step ``h`` can find the same week in past
   years) and every head has a learned recency penalty on the lag (ALiBi-style), so the
   weight of the far past decays instead of diluting the softmax on long histories;
7. a small MLP per forecast step turns [context, GRU state, step embedding] into a scaled
   correction added to the linear part. Its last layer starts at zero, so an untrained model
   is its linear part and training adds only what the network learns beyond it. (Without a
   highway, the correction is an offset from the anchor moved along the trend.)

Padding never matters: features use only valid positions and only the past, the GRU runs
left to right and is read at ``length - 1``, the highway gathers each row's own last weeks,
and attention is masked to valid positions, so a row gives the same forecast alone as in any
padded batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ForecasterConfig:
    horizon: int = 52  # H: weeks forecast after the last valid value
    season: int = 52  # weeks in the yearly cycle: window of the anchor mean and of the features
    min_length: int = 104  # shortest history served: two seasons, so the growth feature exists
    # longest history recommended to a server: the trainer sets it to the window it chooses
    max_length: int = 1040
    scale: float = 2.0  # ppm per model unit for values and the forecast
    growth_mean: float = 1.5  # ppm: typical change over one season, subtracted from the feature
    growth_scale: float = 1.0  # ppm per model unit for the yearly-change feature
    n_embd: int = 64  # GRU hidden size; also the width of keys, values and the output MLP
    n_head: int = 4  # attention heads; n_embd must be divisible by n_head
    n_harmonics: int = 8  # sin/cos pairs of the periodic lag encoding (periods season/k)
    dropout: float = 0.0  # dropout on the attention context during training
    # weeks read by the linear highway (0: none): forecast = last value + trend + a linear map
    # of the last ``highway`` values, de-trended and minus the last value + the network's
    # output, so the network learns what a ridge on those weeks misses; at most min_length
    highway: int = 104
    # weeks over which the trend's growth is measured (0: no drift term): the forecast starts
    # from the anchor plus that growth per week up to each step (a row shorter than
    # drift_span + season measures it over what it has)
    drift_span: int = 208


N_FEATURES = 4  # seasonal residual, yearly change, residual-window fill, has-yearly-change


class Forecaster(nn.Module):
    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0, (
            f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})"
        )
        assert config.min_length >= config.season, (
            f"min_length ({config.min_length}) must cover one season ({config.season})"
        )
        self.config = config
        C, K = config.n_embd, config.n_harmonics
        self.gru = nn.GRU(N_FEATURES, C, num_layers=1, batch_first=True)
        self.key = nn.Linear(C + 2 * K, C)
        self.value = nn.Linear(C + 2, C)  # GRU output plus the two raw value features
        self.query = nn.Linear(C, C)
        self.step_embd = nn.Parameter(torch.randn(config.horizon, C) * 0.1)  # (H, C)
        # recency penalty per head, in score units per season of lag: softplus(.) >= 0
        self.recency = nn.Parameter(torch.linspace(-3.0, 1.0, config.n_head))
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Sequential(nn.Linear(3 * C, C), nn.GELU(), nn.Linear(C, 1))
        if config.highway:
            assert config.highway <= config.min_length, (
                f"highway ({config.highway}) must fit in min_length ({config.min_length})"
            )
            self.highway = nn.Linear(config.highway, config.horizon)
            nn.init.zeros_(self.highway.weight)
            nn.init.zeros_(self.highway.bias)
            # the network's output starts at zero: a new model is its linear part (which the
            # trainer starts as a ridge), and training adds only what improves on it
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
        # harmonics of the lag encoding: 2*pi*k/season, k = 1..K
        freqs = 2 * math.pi * torch.arange(1, K + 1, dtype=torch.float32) / config.season
        self.register_buffer("freqs", freqs, persistent=False)

    def features(self, history: torch.Tensor, lengths: torch.Tensor):
        """Per-step features, anchor and masks, computed only from each row's valid prefix."""
        S, T = self.config.season, history.size(1)
        lengths = lengths.clamp(1, T)  # (B,) a row is never read beyond its own tensor
        pos = torch.arange(T, device=history.device)  # (T,)
        valid = pos[None, :] < lengths[:, None]  # (B, T)
        last = history.gather(1, (lengths - 1)[:, None])  # (B, 1) last valid value
        x = torch.where(valid, history - last, torch.zeros_like(history))  # (B, T) ppm from last
        validf = valid.to(history.dtype)  # (B, T)

        # trailing one-season sums of values and of valid flags (only past positions): (B, T)
        win_sum = F.avg_pool1d(F.pad(x, (S - 1, 0))[:, None], S, stride=1)[:, 0] * S
        win_cnt = F.avg_pool1d(F.pad(validf, (S - 1, 0))[:, None], S, stride=1)[:, 0] * S
        mean = win_sum / win_cnt.clamp(min=1.0)  # (B, T) trailing mean, ppm from last
        level = mean.gather(1, (lengths - 1)[:, None])  # (B, 1) mean of the last S valid values
        anchor = last + level  # (B, 1) ppm
        growth_per_week = self.growth_per_week(mean, level, lengths)  # (B, 1) ppm per week

        resid = (x - mean) / self.config.scale  # (B, T) seasonal residual
        year_ago = F.pad(x, (S, 0))[:, :T]  # (B, T) value one season earlier
        has_year = (pos >= S)[None, :] & valid  # (B, T)
        growth = (x - year_ago - self.config.growth_mean) / self.config.growth_scale  # (B, T)
        growth = torch.where(has_year, growth, torch.zeros_like(growth))
        fill = (pos + 1).clamp(max=S).to(history.dtype)[None, :] / S  # (1, T) window fill
        feats = torch.stack(
            [resid, growth, fill.expand_as(resid), has_year.to(history.dtype)], dim=-1
        )  # (B, T, N_FEATURES)
        feats = torch.where(valid[..., None], feats, torch.zeros_like(feats))
        lag = (lengths - 1)[:, None] - pos[None, :]  # (B, T) steps back from the last valid
        return feats, anchor, growth_per_week, valid, lag.to(history.dtype)

    def growth_per_week(self, mean: torch.Tensor, level: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, 1): the change of the one-season mean over the last ``drift_span`` weeks, per week.

        A row with fewer than ``drift_span + season`` values uses the span it has (at least
        one season, as min_length >= 2 seasons).
        """
        S, span = self.config.season, self.config.drift_span
        if not span:
            return torch.zeros_like(level)
        spans = (lengths - S).clamp(min=1, max=span)  # (B,)
        earlier = mean.gather(1, (lengths - 1 - spans).clamp(min=0)[:, None])  # (B, 1)
        return (level - earlier) / spans[:, None].to(level.dtype)

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """history (B, T) float ppm, right-padded; lengths (B,) int64 -> forecast (B, H) ppm."""
        assert history.dim() == 2, f"history must be (batch, time), got {tuple(history.shape)}"
        assert lengths.dim() == 1, f"lengths must be (batch,), got {tuple(lengths.shape)}"
        cfg = self.config
        B, T = history.shape
        H, nh, C = cfg.horizon, cfg.n_head, cfg.n_embd
        hd = C // nh

        feats, anchor, growth, valid, lag = self.features(history, lengths)
        out, _ = self.gru(feats)  # (B, T, C)
        out = torch.where(valid[..., None], out, torch.zeros_like(out))
        idx = (lengths.clamp(1, T) - 1)[:, None, None].expand(B, 1, C)  # (B, 1, C)
        state = out.gather(1, idx)[:, 0]  # (B, C) GRU state at the last valid step

        angle = lag[..., None] * self.freqs  # (B, T, K)
        lag_enc = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)  # (B, T, 2K)
        k = self.key(torch.cat([out, lag_enc], dim=-1))  # (B, T, C)
        v = self.value(torch.cat([out, feats[..., :2]], dim=-1))  # (B, T, C)
        q = self.query(state)[:, None, :] + self.step_embd[None]  # (B, H, C)
        k = k.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        q = q.view(B, H, nh, hd).transpose(1, 2)  # (B, nh, H, hd)

        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, nh, H, T)
        penalty = F.softplus(self.recency)[None, :, None] * (lag / cfg.season)[:, None, :]
        att = att - penalty[:, :, None, :]  # (B, nh, H, T) recency penalty per head
        att = att.masked_fill(~valid[:, None, None, :], float("-inf"))
        att = F.softmax(att, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(B, H, C)  # (B, H, C)
        ctx = self.drop(ctx)

        steps = self.step_embd[None].expand(B, H, C)  # (B, H, C)
        z = torch.cat([ctx, state[:, None, :].expand(B, H, C), steps], dim=-1)  # (B, H, 3C)
        offset = self.head(z)[..., 0]  # (B, H) scaled offset
        if cfg.highway:  # the linear forecast plus the network's correction
            return self.linear_part(history, lengths, growth) + cfg.scale * offset  # (B, H) ppm
        # without a highway: the anchor (the mean of the last season, centred (S - 1) / 2
        # weeks back) moved along the trend, plus the network's offset
        ahead = (cfg.season - 1) / 2 + torch.arange(1, H + 1, device=history.device, dtype=history.dtype)
        return anchor + growth * ahead[None, :] + cfg.scale * offset  # (B, H) ppm

    def linear_inputs(
        self, history: torch.Tensor, lengths: torch.Tensor, growth: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last (B, 1), recent (B, highway)): the last valid value, and the last ``highway``
        valid values minus it with the trend (``growth`` per week) taken out, so they hold
        only the season and the noise.
        """
        W, T = self.config.highway, history.size(1)
        lengths = lengths.clamp(1, T)
        last = history.gather(1, (lengths - 1)[:, None])  # (B, 1)
        # a row shorter than W (the server refuses those) repeats its first value instead of
        # reading outside the tensor
        steps = torch.arange(W, device=history.device)
        idx = ((lengths - W)[:, None] + steps[None, :]).clamp(min=0)  # (B, W)
        weeks_back = (W - 1 - steps).to(history.dtype)  # (W,) 0 for the last value
        return last, history.gather(1, idx) - last + growth * weeks_back[None, :]

    def linear_part(self, history: torch.Tensor, lengths: torch.Tensor, growth: torch.Tensor) -> torch.Tensor:
        """(B, H) ppm: the last value moved along the trend, plus the highway's linear map of
        the de-trended last weeks (a ridge's form: training starts it as one)."""
        last, recent = self.linear_inputs(history, lengths, growth)
        ahead = torch.arange(1, self.config.horizon + 1, device=history.device, dtype=history.dtype)
        return last + growth * ahead[None, :] + self.highway(recent)  # (B, H)
