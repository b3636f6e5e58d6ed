"""The forecaster: a GRU over a variable-length weekly history, read out by horizon attention.

Input is a right-padded batch of raw series values (``history``, ppm) and each row's true
length (``lengths``); output is the next ``horizon`` values in the same units. Everything a
server would otherwise have to do lives in ``forward``:

1. per-row scaling: ``anchor`` is the mean of the row's last ``season`` valid values (a
   de-seasonalised level), and every feature is measured from the row's last valid value, so
   a model trained on 1960s levels works at any level of the rising trend;
2. stationary per-step features: the value minus its trailing one-season mean (the seasonal
   residual) and the change since one season earlier (the yearly growth). Neither grows with
   the length of the history, so histories far longer than the training windows stay in
   distribution;
3. a GRU run left to right; its state at the last valid step summarises the recent dynamics;
4. one query per forecast step attends over the valid GRU outputs. Keys carry a periodic
   encoding of the lag from the last valid step (so step ``h`` can find the same week in past
   years) and every head has a learned recency penalty on the lag (ALiBi-style), so the
   weight of the far past decays instead of diluting the softmax on long histories;
5. a small MLP per forecast step turns [context, GRU state, step embedding] into a scaled
   offset from the anchor.

Padding never matters: features use only valid positions and only the past, the GRU runs
left to right and is read at ``length - 1``, and attention is masked to valid positions, so a
row gives the same forecast alone as in any padded batch.
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
    max_length: int = 1040  # longest history recommended to a server (20 years)
    scale: float = 2.0  # ppm per model unit for values and the forecast
    growth_mean: float = 1.5  # ppm: typical change over one season, subtracted from the feature
    growth_scale: float = 1.0  # ppm per model unit for the yearly-change feature
    n_embd: int = 64  # GRU hidden size; also the width of keys, values and the output MLP
    n_head: int = 4  # attention heads; n_embd must be divisible by n_head
    n_harmonics: int = 8  # sin/cos pairs of the periodic lag encoding (periods season/k)
    dropout: float = 0.0  # dropout on the attention context during training


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
        return feats, anchor, valid, lag.to(history.dtype)

    def forward(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """history (B, T) float ppm, right-padded; lengths (B,) int64 -> forecast (B, H) ppm."""
        assert history.dim() == 2, f"history must be (batch, time), got {tuple(history.shape)}"
        assert lengths.dim() == 1, f"lengths must be (batch,), got {tuple(lengths.shape)}"
        cfg = self.config
        B, T = history.shape
        H, nh, C = cfg.horizon, cfg.n_head, cfg.n_embd
        hd = C // nh

        feats, anchor, valid, lag = self.features(history, lengths)
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
        offset = self.head(z)[..., 0]  # (B, H) scaled offset from the anchor
        return anchor + cfg.scale * offset  # (B, H) ppm
