"""LightTS student: MLPs over continuous and interval down-samplings of each series.

Zhang, Zhou, Jin, Liu, Zhang, Li, Li, "Less Is More: Fast Multivariate Time Series Forecasting with Light
Sampling-oriented MLP Structures", arXiv 2207.01186, 2022 (Time-Series-Library's version: widths from
d_model, chunk size 24).

    x [B, L, C] (optionally instance-normalized); each variable's window, left-padded by edge
    replication to a multiple of the chunk size c, is cut two ways into n = L' / c sub-series of c steps:
      continuous sampling: sub-series k = steps k*c ... k*c + c - 1          [B * C, c, n]
      interval sampling:   sub-series k = steps k, k + n, k + 2n, ...        [B * C, c, n]
    each view -> IEBlock (MLP along each sub-series, then a linear map across the n sub-series, then an
    output projection) -> Linear(n -> 1)                                     [B * C, d_model / 4]
    -> concatenate the two views                                             [B, C, d_model / 2]
    -> IEBlock across the C variables, output S steps                        [B, S, C]
    + a linear highway Linear(L -> S) along time, per variable.

Feature: the concatenated continuous / interval representation of each variable, the last
per-variable state before the block that mixes the variables, ``[B, C, 2 * (d_model // 4)]``;
``feature_dim = 2 * (d_model // 4)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Forecast, ForecastConfig, Forecaster, check_choice, check_positive_int
from .layers import INSTANCE_NORMS, instance_norm


@dataclass(frozen=True, kw_only=True)
class LightTSConfig(ForecastConfig):
    d_model: int = 512  # width; the sampling IEBlocks use d_model // 4 (at least 16)
    chunk_size: int = 24  # steps per sub-series, capped at min(horizon, lookback)
    norm: str = "none"  # instance norm: "none" (the paper), "mean" or "revin"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "d_model", "chunk_size")
        if self.d_model < 16:
            raise ValueError(f"{type(self).__name__}.d_model must be at least 16, got {self.d_model!r}")
        check_choice(self, "norm", INSTANCE_NORMS)


# Time-Series-Library runs LightTS with the defaults on every long-horizon data set.
PRESETS: dict[str, dict] = {}


class IEBlock(nn.Module):
    """Information-exchange block on ``[N, H_in, W]`` (W columns of H_in rows) -> ``[N, H_out, W]``.

    An MLP along the rows of each column (shared by the columns), a linear map across the columns
    (identity-initialized, residual), then a linear output projection along the rows.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_columns: int) -> None:
        super().__init__()
        self.rows = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, hidden_dim // 4)
        )
        self.columns = nn.Linear(num_columns, num_columns)
        nn.init.eye_(self.columns.weight)
        self.output = nn.Linear(hidden_dim // 4, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.rows(x.transpose(1, 2))  # [N, H_in, W] -> [N, W, H_in] -> [N, W, h]
        x = x + self.columns(x.transpose(1, 2)).transpose(1, 2)  # [N, h, W] mixed across W -> [N, W, h]
        return self.output(x).transpose(1, 2)  # [N, W, H_out] -> [N, H_out, W]


class LightTS(Forecaster):
    config_class = LightTSConfig
    presets = PRESETS

    def __init__(self, config: LightTSConfig) -> None:
        super().__init__(config)
        L, S, C = config.lookback, config.horizon, config.n_vars
        hidden = config.d_model // 4
        self.chunk = min(config.chunk_size, L, S)
        self.n_chunks = math.ceil(L / self.chunk)
        self.norm = instance_norm(config.norm, C)
        self.continuous = IEBlock(self.chunk, hidden, hidden, self.n_chunks)
        self.continuous_pool = nn.Linear(self.n_chunks, 1)
        self.interval = IEBlock(self.chunk, hidden, hidden, self.n_chunks)
        self.interval_pool = nn.Linear(self.n_chunks, 1)
        self.mixer = IEBlock(2 * hidden, 2 * hidden, S, C)
        self.highway = nn.Linear(L, S)
        self.feature_dim = 2 * hidden

    def forward(self, x: Tensor) -> Forecast:
        B, L, C = x.shape
        if self.norm is not None:
            x, stats = self.norm(x)
        series = x.transpose(1, 2)  # [B, L, C] -> [B, C, L]
        highway = self.highway(series)  # [B, C, S]

        pad = self.chunk * self.n_chunks - L
        if pad:
            series = F.pad(series, (pad, 0), mode="replicate")  # [B, C, L'] with L' = n * c
        continuous = series.reshape(B * C, self.n_chunks, self.chunk).transpose(1, 2)  # -> [B * C, c, n]
        interval = series.reshape(B * C, self.chunk, self.n_chunks)  # [B, C, L'] -> [B * C, c, n]
        continuous = self.continuous_pool(self.continuous(continuous)).squeeze(-1)  # [B * C, h, 1] -> [B * C, h]
        interval = self.interval_pool(self.interval(interval)).squeeze(-1)  # [B * C, h, 1] -> [B * C, h]
        feature = torch.cat([continuous, interval], dim=-1).reshape(B, C, -1)  # [B * C, 2h] -> [B, C, 2h]

        y = self.mixer(feature.transpose(1, 2))  # [B, C, 2h] -> [B, 2h, C] -> [B, S, C]
        y = y + highway.transpose(1, 2)  # [B, C, S] -> [B, S, C]
        if self.norm is not None:
            y = self.norm.inverse(y, stats)
        return Forecast(y, feature)
