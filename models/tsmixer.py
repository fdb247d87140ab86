"""TSMixer student: all-MLP mixing along time and across variables.

Chen, Li, Arik, Yoder, Pfister, "TSMixer: An All-MLP Architecture for Time Series Forecasting",
TMLR 2023 (the paper's variant with reversible instance normalization).

    x [B, L, C] -> RevIN
    -> e_layers x mixer block, each with two residual MLPs:
         time mixing:    norm over (L, C) -> Linear(L -> L) along time, shared by the variables -> ReLU
                         -> dropout; x = x + that
         feature mixing: norm over (L, C) -> Linear(C -> d_ff) -> ReLU -> dropout -> Linear(d_ff -> C)
                         -> dropout, shared by the time steps; x = x + that
    -> temporal projection Linear(L -> S) along time, per variable -> [B, S, C] -> de-normalize

The norm is BatchNorm ("batch": statistics per (time step, variable) over the batch) or LayerNorm
("layer": over the whole [L, C] window), the paper's two options. "batch" needs training batches of at
least 2 windows (a last batch of one window fails in train mode: drop it, or use "layer").

Feature: each variable's hidden series before the temporal projection, ``[B, C, L]``;
``feature_dim = lookback``.
"""


from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .base import (
    Forecast,
    ForecastConfig,
    Forecaster,
    check_bool,
    check_choice,
    check_positive_int,
    check_probability,
)
from .layers import RevIN


@dataclass(frozen=True, kw_only=True)
class TSMixerConfig(ForecastConfig):
    e_layers: int = 2  # mixer blocks
    d_ff: int = 64  # hidden width of the feature-mixing MLP
    dropout: float = 0.1  # dropout after each mixing MLP
    norm_type: str = "batch"  # "batch" or "layer": the norm before each mixing MLP
    revin: bool = True  # reversible instance normalization (mean/std, learnable affine)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "e_layers", "d_ff")
        check_probability(self, "dropout")
        check_choice(self, "norm_type", ("batch", "layer"))
        check_bool(self, "revin")


# Our choice, not the paper's: the defaults everywhere, and a feature-mixing MLP wider than the number
# of variables on the wide data sets.
PRESETS: dict[str, dict] = {
    "electricity": {"d_ff": 256},
    "traffic": {"d_ff": 256},
}


class WindowNorm(nn.Module):
    """Normalize a window ``[B, L, C]`` over (L, C): BatchNorm per position, or LayerNorm per window."""

    def __init__(self, norm_type: str, lookback: int, n_vars: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(lookback * n_vars) if norm_type == "batch" else None
        self.layer_norm = nn.LayerNorm([lookback, n_vars]) if norm_type == "layer" else None

    def forward(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        if self.layer_norm is not None:
            return self.layer_norm(x)
        if self.norm is None:
            raise ValueError("WindowNorm needs norm_type 'batch' or 'layer'")
        return self.norm(x.reshape(B, L * C)).reshape(B, L, C)  # [B, L, C] -> [B, L * C] -> [B, L, C]


class MixerBlock(nn.Module):
    def __init__(self, config: TSMixerConfig) -> None:
        super().__init__()
        L, C = config.lookback, config.n_vars
        self.time_norm = WindowNorm(config.norm_type, L, C)
        self.time_mlp = nn.Sequential(nn.Linear(L, L), nn.ReLU(), nn.Dropout(config.dropout))
        self.feature_norm = WindowNorm(config.norm_type, L, C)
        self.feature_mlp = nn.Sequential(
            nn.Linear(C, config.d_ff),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.d_ff, C),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.time_mlp(self.time_norm(x).transpose(1, 2))  # [B, L, C] -> [B, C, L] -> [B, C, L]
        x = x + y.transpose(1, 2)  # [B, C, L] -> [B, L, C]
        return x + self.feature_mlp(self.feature_norm(x))  # [B, L, C]


class TSMixer(Forecaster):
    config_class = TSMixerConfig
    presets = PRESETS

    def __init__(self, config: TSMixerConfig) -> None:
        super().__init__(config)
        L, S, C = config.lookback, config.horizon, config.n_vars
        self.norm = RevIN(C, scale=True, affine=True) if config.revin else None
        self.blocks = nn.ModuleList(MixerBlock(config) for _ in range(config.e_layers))
        self.projection = nn.Linear(L, S)
        self.feature_dim = L

    def forward(self, x: Tensor) -> Forecast:
        B, L, C = x.shape
        if self.norm is not None:
            x, stats = self.norm(x)
        for block in self.blocks:
            x = block(x)  # [B, L, C]
        feature = x.transpose(1, 2)  # [B, L, C] -> [B, C, L]
        y = self.projection(feature).transpose(1, 2)  # [B, C, S] -> [B, S, C]
        if self.norm is not None:
            y = self.norm.inverse(y, stats)
        return Forecast(y, feature)
