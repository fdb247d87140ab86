"""The TimeDistill student: a channel-independent, decomposed two-branch MLP.

Ni, Liu, Wang, Jin, Jin, "TimeDistill: Efficient Long-Term Time Series Forecasting with MLP via
Cross-Architecture Distillation", arXiv 2502.15016 (KDD 2026); the architecture is written down in
docs/method.md ("Student"). Trained on the ground truth alone it is also the "MLP baseline".

    x [B, L, C] -> instance norm -> trend = moving average, seasonal = x - trend
    per branch: Linear(L -> D) over time                     h_seasonal, h_trend  [B, C, D]
    feature H_s = h_seasonal + h_trend (before norm/activation)                   [B, C, D]
    per branch: BatchNorm1d(C) -> ReLU -> Linear(D -> S); sum the branches         [B, C, S]
    -> [B, S, C] -> undo the instance norm

Feature: H_s, the sum of the two branches' hidden states; ``feature_dim = d_model``.
At L=720, S=96, C=7 with the defaults it has 836,828 parameters.
"""


from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .base import Forecast, ForecastConfig, Forecaster, check_choice, check_positive_int
from .layers import RevIN, SeriesDecomposition, instance_norm


@dataclass(frozen=True, kw_only=True)
class MLPConfig(ForecastConfig):
    d_model: int = 512  # D: hidden width of each branch (1024 for very wide data sets)
    moving_avg: int = 25  # width of the moving average that extracts the trend
    norm: str = "mean"  # "mean": subtract the window mean; "revin": mean/std with learnable affine

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "d_model", "moving_avg")
        check_choice(self, "norm", ("mean", "revin"))


# method.md: D = 1024 and RevIN for very high-dimensional sets; the defaults everywhere else.
PRESETS: dict[str, dict] = {
    "electricity": {"norm": "revin"},
    "traffic": {"norm": "revin", "d_model": 1024},
}


class MLP(Forecaster):
    config_class = MLPConfig
    presets = PRESETS

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        L, S, C, D = config.lookback, config.horizon, config.n_vars, config.d_model
        norm = instance_norm(config.norm, C)
        if norm is None:  # MLPConfig checks norm; "none" is not among its choices
            raise ValueError(f"MLPConfig.norm must be 'mean' or 'revin', got {config.norm!r}")
        self.norm: RevIN = norm
        self.decomposition = SeriesDecomposition(config.moving_avg)
        self.seasonal_in = nn.Linear(L, D)
        self.trend_in = nn.Linear(L, D)
        # BatchNorm1d(C) on [B, C, D]: one statistic per variable, over the batch and the width.
        self.seasonal_out = nn.Sequential(nn.BatchNorm1d(C), nn.ReLU(), nn.Linear(D, S))
        self.trend_out = nn.Sequential(nn.BatchNorm1d(C), nn.ReLU(), nn.Linear(D, S))
        self.feature_dim = D

    def forward(self, x: Tensor) -> Forecast:
        B, L, C = x.shape
        x, stats = self.norm(x)
        seasonal, trend = self.decomposition(x)  # [B, L, C] each
        h_seasonal = self.seasonal_in(seasonal.transpose(1, 2))  # [B, L, C] -> [B, C, L] -> [B, C, D]
        h_trend = self.trend_in(trend.transpose(1, 2))  # [B, L, C] -> [B, C, L] -> [B, C, D]
        feature = h_seasonal + h_trend  # [B, C, D]
        y = self.seasonal_out(h_seasonal) + self.trend_out(h_trend)  # [B, C, S]
        y = y.transpose(1, 2)  # [B, C, S] -> [B, S, C]
        return Forecast(self.norm.inverse(y, stats), feature)
