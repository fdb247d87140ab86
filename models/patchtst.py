"""PatchTST teacher: a channel-independent Transformer over patches of each variable.

Nie, Nguyen, Sinthong, Kalagnanam, "A Time Series is Worth 64 Words: Long-term Forecasting with
Transformers", ICLR 2023 (Time-Series-Library defaults for the sizes; the paper's own choices for the
details it fixes: RevIN without affine, learnable positions, BatchNorm in the encoder, no attention
dropout, a flatten head).

    x [B, L, C] -> RevIN -> [B, C, L] -> replicate the last step `stride` times and cut patches of
    `patch_len` every `stride` steps                                           [B, C, P, patch_len]
    -> Linear(patch_len -> D) + learnable position embedding                   [B * C, P, D]
    -> e_layers x (self-attention over the P patches + feed-forward, post BatchNorm); all variables
       share the weights (channel independence)
    -> flatten each variable's patches                                         [B, C, D * P]
    -> Linear(D * P -> S) -> [B, S, C] -> de-normalize

The original's "residual attention" (adding the previous layer's attention scores) is left out, as in
Time-Series-Library.

Feature: each variable's flattened patch representation, the flatten head's input, ``[B, C, D * P]``
(method.md); ``feature_dim = d_model * P`` with ``P = (L + stride - patch_len) // stride + 1``.
"""


from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import (
    Forecast,
    ForecastConfig,
    Forecaster,
    check_at_most,
    check_bool,
    check_divisible,
    check_positive_int,
    check_probability,
)
from .layers import RevIN, TransformerEncoderLayer, num_patches, patchify


@dataclass(frozen=True, kw_only=True)
class PatchTSTConfig(ForecastConfig):
    patch_len: int = 16  # steps per patch
    stride: int = 8  # steps between patch starts
    d_model: int = 512  # D: patch token width
    n_heads: int = 8  # attention heads (d_model must be divisible by it)
    e_layers: int = 2  # encoder layers
    d_ff: int = 2048  # feed-forward width
    dropout: float = 0.1  # dropout on embeddings, feed-forward and residuals
    head_dropout: float = 0.0  # dropout after the flatten head
    revin: bool = True  # instance-normalize each window (mean/std)
    affine: bool = False  # learnable per-variable affine in RevIN

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self, "patch_len", "stride", "d_model", "n_heads", "e_layers", "d_ff")
        check_at_most(self, "patch_len", "lookback")
        check_divisible(self, "d_model", "n_heads")
        check_probability(self, "dropout", "head_dropout")
        check_bool(self, "revin", "affine")


# From the PatchTST authors' supervised scripts (lookback 336 / 104 there; 720 here).
_SMALL = {"e_layers": 3, "n_heads": 4, "d_model": 16, "d_ff": 128, "dropout": 0.3}
_LARGE = {"e_layers": 3, "n_heads": 16, "d_model": 128, "d_ff": 256, "dropout": 0.2}
PRESETS: dict[str, dict] = {
    "etth1": _SMALL,
    "etth2": _SMALL,
    "ettm1": _LARGE,
    "ettm2": _LARGE,
    "weather": _LARGE,
    "electricity": _LARGE,
    "traffic": _LARGE,
    "illness": {**_SMALL, "patch_len": 24, "stride": 2},
}


class PatchTST(Forecaster):
    config_class = PatchTSTConfig
    presets = PRESETS
    config: PatchTSTConfig  # the model's own config (the base class types it as ForecastConfig)

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__(config)
        L, S, C, D = config.lookback, config.horizon, config.n_vars, config.d_model
        self.n_patches = num_patches(L, config.patch_len, config.stride)
        self.norm = RevIN(C, scale=True, affine=config.affine) if config.revin else None
        self.embedding = nn.Linear(config.patch_len, D)
        self.position = nn.Parameter(torch.empty(self.n_patches, D).uniform_(-0.02, 0.02))
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                D,
                config.n_heads,
                config.d_ff,
                dropout=config.dropout,
                attn_dropout=0.0,
                activation="gelu",
                norm="batch",
            )
            for _ in range(config.e_layers)
        )
        self.head = nn.Linear(D * self.n_patches, S)
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.feature_dim = D * self.n_patches

    def forward(self, x: Tensor) -> Forecast:
        B, L, C = x.shape
        cfg = self.config
        if self.norm is not None:
            x, stats = self.norm(x)
        patches = patchify(x.transpose(1, 2), cfg.patch_len, cfg.stride)  # [B, C, L] -> [B, C, P, patch]
        P = patches.shape[2]
        tokens = self.embedding(patches) + self.position  # [B, C, P, D]
        tokens = self.embedding_dropout(tokens).reshape(B * C, P, -1)  # [B, C, P, D] -> [B * C, P, D]
        for layer in self.layers:
            tokens = layer(tokens)  # [B * C, P, D]
        tokens = tokens.reshape(B, C, P, -1).transpose(2, 3)  # [B * C, P, D] -> [B, C, D, P]
        feature = tokens.flatten(start_dim=2)  # [B, C, D, P] -> [B, C, D * P]
        y = self.head_dropout(self.head(feature)).transpose(1, 2)  # [B, C, S] -> [B, S, C]
        if self.norm is not None:
            y = self.norm.inverse(y, stats)
        return Forecast(y, feature)
