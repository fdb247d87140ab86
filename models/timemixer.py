"""TimeMixer teacher: decomposable multiscale mixing.

Wang, Wu, Shi, Hu, Luo, Ma, Zhang, Zhou, "TimeMixer: Decomposable Multiscale Mixing for Time Series
Forecasting", ICLR 2024 (Time-Series-Library's channel-independent configuration with average-pooling
down-sampling and moving-average decomposition; sizes from its long-term scripts).

    x [B, L, C] -> M + 1 scales by repeated average pooling of width w: lengths T_m = L // w^m
    each scale: its own RevIN (affine), variables folded into the batch      [B * C, T_m, 1]
    -> token embedding: Conv1d(1 -> D, kernel 3, circular padding)           [B * C, T_m, D]
    -> e_layers x Past-Decomposable-Mixing block:
         decompose every scale into seasonal + trend (moving average along time)
         seasonal parts mixed bottom-up (fine -> coarse), trend parts top-down (coarse -> fine),
         each step an MLP along time; out = x + MLP_D(seasonal + trend)
    -> Future-Multipredictor-Mixing: per scale Linear(T_m -> S) along time    [B * C, S, D]
       then Linear(D -> 1), summed over the scales                           [B, S, C]
    -> de-normalize with the finest scale's statistics

Feature: the future-multipredictor output summed over the scales, right before the final Linear(D -> 1):
``sum_m predictor_m(x_m)`` per variable, flattened over (S, D) as ``[B, C, S * D]``;
``feature_dim = horizon * d_model``. TimeMixer has no single per-variable token; this is the last
per-variable representation, the point where all scales meet, and the prediction is a fixed linear
read-out of it (sum over scales of Linear(D -> 1)), just as the flattened patch representations of
PatchTST and ModernTCN are the inputs of their heads.
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Forecast,
    ForecastConfig,
    Forecaster,
    check_bool,
    check_non_negative_int,
    check_positive_int,
    check_probability,
)
from .layers import RevIN, SeriesDecomposition


@dataclass(frozen=True, kw_only=True)
class TimeMixerConfig(ForecastConfig):
    # Sizes from Time-Series-Library's TimeMixer long-term scripts (its generic run.py defaults,
    # d_model 512 and no down-sampling, are not what the model is run with).
    d_model: int = 16  # D: embedding width
    d_ff: int = 32  # hidden width of the MLP across D in each mixing block
    e_layers: int = 2  # Past-Decomposable-Mixing blocks
    down_sampling_layers: int = 3  # M: extra, coarser scales
    down_sampling_window: int = 2  # w: average-pooling width between scales
    moving_avg: int = 25  # moving-average width of the decomposition
    dropout: float = 0.1  # dropout after the embedding
    use_norm: bool = True  # RevIN (with affine) on every scale

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "d_model", "d_ff", "e_layers", "down_sampling_window", "moving_avg")
        check_non_negative_int(self, "down_sampling_layers")
        check_probability(self, "dropout")
        check_bool(self, "use_norm")
        if self.down_sampling_layers > 0 and self.down_sampling_window < 2:
            raise ValueError(
                f"{type(self).__name__}.down_sampling_window must be at least 2 when down-sampling, "
                f"got {self.down_sampling_window!r}"
            )
        if self.lookback // self.down_sampling_window**self.down_sampling_layers < 1:
            raise ValueError(
                f"{type(self).__name__}.down_sampling_layers={self.down_sampling_layers} leaves no step of "
                f"the lookback {self.lookback} at the coarsest scale"
            )


# From Time-Series-Library's TimeMixer scripts (lookback 96 there; 720 here); ETT uses the defaults.
PRESETS: dict[str, dict] = {
    "weather": {"e_layers": 3},
    "electricity": {"e_layers": 3},
    "traffic": {"e_layers": 3, "d_model": 32, "d_ff": 64},
}


def _time_mlp(n_in: int, n_out: int) -> nn.Sequential:
    """MLP along time (the last axis): Linear(n_in -> n_out) -> GELU -> Linear(n_out -> n_out)."""
    return nn.Sequential(nn.Linear(n_in, n_out), nn.GELU(), nn.Linear(n_out, n_out))


class PastDecomposableMixing(nn.Module):
    def __init__(self, config: TimeMixerConfig, lengths: list[int]) -> None:
        super().__init__()
        D = config.d_model
        self.decomposition = SeriesDecomposition(config.moving_avg)
        # down[m]: scale m -> m + 1 (seasonal, bottom-up); up[m]: scale m + 1 -> m (trend, top-down)
        self.down = nn.ModuleList(_time_mlp(lengths[m], lengths[m + 1]) for m in range(len(lengths) - 1))
        self.up = nn.ModuleList(_time_mlp(lengths[m + 1], lengths[m]) for m in range(len(lengths) - 1))
        self.out = nn.Sequential(nn.Linear(D, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, D))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        seasons, trends = [], []
        for x in xs:
            season, trend = self.decomposition(x)  # [B * C, T_m, D] each
            seasons.append(season.transpose(1, 2))  # [B * C, T_m, D] -> [B * C, D, T_m]
            trends.append(trend.transpose(1, 2))  # [B * C, T_m, D] -> [B * C, D, T_m]

        # Seasonal: fine to coarse, each coarser scale adds what the finer one says about it.
        mixed_seasons = [seasons[0]]
        for m, down in enumerate(self.down):
            mixed_seasons.append(seasons[m + 1] + down(mixed_seasons[-1]))  # [B * C, D, T_{m+1}]

        # Trend: coarse to fine, each finer scale adds what the coarser one says about it.
        mixed_trends = [trends[-1]]
        for m in reversed(range(len(self.up))):
            mixed_trends.append(trends[m] + self.up[m](mixed_trends[-1]))  # [B * C, D, T_m]
        mixed_trends.reverse()

        outs = []
        for x, season, trend in zip(xs, mixed_seasons, mixed_trends, strict=True):
            mixed = (season + trend).transpose(1, 2)  # [B * C, D, T_m] -> [B * C, T_m, D]
            outs.append(x + self.out(mixed))  # [B * C, T_m, D]
        return outs


class TimeMixer(Forecaster):
    config_class = TimeMixerConfig
    presets = PRESETS
    config: TimeMixerConfig  # the model's own config (the base class types it as ForecastConfig)

    def __init__(self, config: TimeMixerConfig) -> None:
        super().__init__(config)
        L, S, C, D = config.lookback, config.horizon, config.n_vars, config.d_model
        self.lengths = [L // config.down_sampling_window**m for m in range(config.down_sampling_layers + 1)]
        self.norms = nn.ModuleList(RevIN(C, scale=True, affine=True) for _ in self.lengths) if config.use_norm else None
        self.embedding = nn.Conv1d(1, D, kernel_size=3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.embedding.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(PastDecomposableMixing(config, self.lengths) for _ in range(config.e_layers))
        self.predictors = nn.ModuleList(nn.Linear(T, S) for T in self.lengths)
        self.projection = nn.Linear(D, 1)
        self.feature_dim = S * D

    def forward(self, x: Tensor) -> Forecast:
        B, L, C = x.shape
        S, D = self.config.horizon, self.config.d_model

        # Multiscale inputs: average pooling along time, floor on odd lengths.
        scales = [x]
        for _ in self.lengths[1:]:
            pooled = F.avg_pool1d(scales[-1].transpose(1, 2), self.config.down_sampling_window)  # [B, C, T]
            scales.append(pooled.transpose(1, 2))  # [B, C, T_m] -> [B, T_m, C]

        tokens, stats = [], []
        for m, x_m in enumerate(scales):
            if self.norms is not None:
                x_m, stats_m = self.norms[m](x_m)
                stats.append(stats_m)
            T = x_m.shape[1]
            x_m = x_m.transpose(1, 2).reshape(B * C, 1, T)  # [B, T_m, C] -> [B * C, 1, T_m]
            embedded = self.embedding(x_m).transpose(1, 2)  # [B * C, D, T_m] -> [B * C, T_m, D]
            tokens.append(self.embedding_dropout(embedded))

        for block in self.blocks:
            tokens = block(tokens)  # list of [B * C, T_m, D]

        # Future multipredictor mixing: each scale predicts the horizon; the scales are summed.
        futures = torch.stack(
            [
                predictor(t.transpose(1, 2)).transpose(1, 2)  # [B * C, D, T_m] -> [B * C, D, S] -> [B * C, S, D]
                for predictor, t in zip(self.predictors, tokens, strict=True)
            ]
        )  # [M + 1, B * C, S, D]
        y = self.projection(futures).sum(dim=0)  # [M + 1, B * C, S, 1] -> [B * C, S, 1]
        y = y.reshape(B, C, S).transpose(1, 2)  # [B * C, S, 1] -> [B, C, S] -> [B, S, C]
        if self.norms is not None:
            finest = cast(RevIN, self.norms[0])  # a ModuleList's items are typed as Module; these are RevIN
            y = finest.inverse(y, stats[0])  # the finest scale's statistics
        feature = futures.sum(dim=0).reshape(B, C, S * D)  # [B * C, S, D] -> [B, C, S * D]
        return Forecast(y, feature)
