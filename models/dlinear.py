"""DLinear teacher: series decomposition and one linear map per component.

Zeng, Chen, Zhang, Xu, "Are Transformers Effective for Time Series Forecasting?", AAAI 2023
(Time-Series-Library's DLinear: weights initialized to 1/L, no instance normalization).

    x [B, L, C] -> seasonal, trend (moving average)
    per component: Linear(L -> S) over time, shared by all variables (or one per variable)
    prediction = seasonal part + trend part

Feature: DLinear has no hidden layer and no normalization, so its richest per-variable representation
is its own forecast before the two components are added: ``[seasonal part, trend part]`` concatenated
along time, ``[B, C, 2 * S]``; ``feature_dim = 2 * horizon``. (method.md: "a model with no per-variable
token may use its normalized prediction as the feature"; the two parts sum to the prediction.)
"""


from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import Forecast, ForecastConfig, Forecaster, check_bool, check_positive_int
from .layers import SeriesDecomposition


@dataclass(frozen=True, kw_only=True)
class DLinearConfig(ForecastConfig):
    moving_avg: int = 25  # width of the moving average that extracts the trend
    individual: bool = False  # one pair of linear maps per variable instead of one shared pair

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "moving_avg")
        check_bool(self, "individual")


# The DLinear scripts use the defaults for every long-horizon data set.
PRESETS: dict[str, dict] = {}


class PerVariableLinear(nn.Module):
    """Linear(L -> S) along the last axis of [B, C, L], with its own weights for each variable."""

    def __init__(self, n_vars: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((n_vars, out_features, in_features), 1.0 / in_features))
        bound = in_features**-0.5  # nn.Linear's default bias initialization
        self.bias = nn.Parameter(torch.empty(n_vars, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bcl,csl->bcs", x, self.weight) + self.bias  # [B, C, L] -> [B, C, S]


class DLinear(Forecaster):
    config_class = DLinearConfig
    presets = PRESETS

    def __init__(self, config: DLinearConfig) -> None:
        super().__init__(config)
        L, S, C = config.lookback, config.horizon, config.n_vars
        self.decomposition = SeriesDecomposition(config.moving_avg)
        self.seasonal: PerVariableLinear | nn.Linear
        self.trend: PerVariableLinear | nn.Linear
        if config.individual:
            self.seasonal = PerVariableLinear(C, L, S)
            self.trend = PerVariableLinear(C, L, S)
        else:
            self.seasonal = nn.Linear(L, S)
            self.trend = nn.Linear(L, S)
            # As in the reference implementation: start from "predict the window mean".
            nn.init.constant_(self.seasonal.weight, 1.0 / L)
            nn.init.constant_(self.trend.weight, 1.0 / L)
        self.feature_dim = 2 * S

    def forward(self, x: Tensor) -> Forecast:
        B, L, C = x.shape
        seasonal, trend = self.decomposition(x)  # [B, L, C] each
        seasonal = self.seasonal(seasonal.transpose(1, 2))  # [B, L, C] -> [B, C, L] -> [B, C, S]
        trend = self.trend(trend.transpose(1, 2))  # [B, L, C] -> [B, C, L] -> [B, C, S]
        prediction = (seasonal + trend).transpose(1, 2)  # [B, C, S] -> [B, S, C]
        feature = torch.cat([seasonal, trend], dim=-1)  # [B, C, 2S]
        return Forecast(prediction, feature)
