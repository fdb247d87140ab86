"""iTransformer teacher: attention across variables, one token per variable.

Liu, Hu, Zhang, Wu, Wang, Ma, Long, "iTransformer: Inverted Transformers Are Effective for Time Series
Forecasting", ICLR 2024 (Time-Series-Library defaults).

    x [B, L, C] -> non-stationary normalization (per window and variable: mean/std, no affine)
    -> variate tokens: Linear(L -> D) applied to each variable's whole window       [B, C, D]
    -> e_layers x (full self-attention over the C tokens + feed-forward, post LayerNorm)
    -> final LayerNorm                                                             [B, C, D]
    -> Linear(D -> S) per token -> [B, S, C] -> de-normalize

Time-Series-Library also appends one token per timestamp feature; we pass no timestamps, so every token
is a variate token.

Feature: the last encoder output after the final LayerNorm, one token per variable, ``[B, C, d_model]``
(method.md); ``feature_dim = d_model``.
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
    check_divisible,
    check_positive_int,
    check_probability,
)
from .layers import RevIN, TransformerEncoderLayer


@dataclass(frozen=True, kw_only=True)
class ITransformerConfig(ForecastConfig):
    d_model: int = 512  # D: token width
    n_heads: int = 8  # attention heads (d_model must be divisible by it)
    e_layers: int = 2  # encoder layers
    d_ff: int = 2048  # feed-forward width
    dropout: float = 0.1  # dropout on embeddings, attention weights, feed-forward and residuals
    activation: str = "gelu"  # feed-forward activation: "gelu" or "relu"
    use_norm: bool = True  # non-stationary (instance) normalization of each window

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "d_model", "n_heads", "e_layers", "d_ff")
        check_divisible(self, "d_model", "n_heads")
        check_probability(self, "dropout")
        check_choice(self, "activation", ("gelu", "relu"))
        check_bool(self, "use_norm")


# From the iTransformer authors' long-horizon scripts (lookback 96 there; 720 here).
PRESETS: dict[str, dict] = {
    "etth1": {"e_layers": 2, "d_model": 256, "d_ff": 256},
    "etth2": {"e_layers": 2, "d_model": 128, "d_ff": 128},
    "ettm1": {"e_layers": 2, "d_model": 128, "d_ff": 128},
    "ettm2": {"e_layers": 2, "d_model": 128, "d_ff": 128},
    "exchange": {"e_layers": 2, "d_model": 128, "d_ff": 128},
    "weather": {"e_layers": 3, "d_model": 512, "d_ff": 512},
    "electricity": {"e_layers": 3, "d_model": 512, "d_ff": 512},
    "traffic": {"e_layers": 4, "d_model": 512, "d_ff": 512},
}


class ITransformer(Forecaster):
    config_class = ITransformerConfig
    presets = PRESETS

    def __init__(self, config: ITransformerConfig) -> None:
        super().__init__(config)
        L, S, C, D = config.lookback, config.horizon, config.n_vars, config.d_model
        self.norm = RevIN(C, scale=True, affine=False) if config.use_norm else None
        self.embedding = nn.Linear(L, D)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                D,
                config.n_heads,
                config.d_ff,
                dropout=config.dropout,
                attn_dropout=config.dropout,
                activation=config.activation,
                norm="layer",
            )
            for _ in range(config.e_layers)
        )
        self.final_norm = nn.LayerNorm(D)
        self.projection = nn.Linear(D, S)
        self.feature_dim = D

    def forward(self, x: Tensor) -> Forecast:
        B, L, C = x.shape
        if self.norm is not None:
            x, stats = self.norm(x)
        tokens = self.embedding_dropout(self.embedding(x.transpose(1, 2)))  # [B, C, L] -> [B, C, D]
        for layer in self.layers:
            tokens = layer(tokens)  # [B, C, D]
        feature = self.final_norm(tokens)  # [B, C, D]
        y = self.projection(feature).transpose(1, 2)  # [B, C, D] -> [B, C, S] -> [B, S, C]
        if self.norm is not None:
            y = self.norm.inverse(y, stats)
        return Forecast(y, feature)
