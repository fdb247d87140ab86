"""ModernTCN teacher: a pure convolutional forecaster with large depthwise kernels.

Luo, Wang, "ModernTCN: A Modern Pure Convolution Structure for General Time Series Analysis",
ICLR 2024 (the single-stage long-term forecasting configuration of the authors' scripts).

    x [B, L, C] -> RevIN -> each variable alone: replicate the last step (patch_size - patch_stride)
    times, Conv1d(1 -> D, kernel patch_size, stride patch_stride) + BatchNorm     [B, C, D, N]
    -> num_blocks x ModernTCN block, with a residual around each:
         depthwise Conv1d over time with a large kernel (+ a parallel small kernel; both followed by
         BatchNorm, foldable into one conv: `structural_reparam`) on every (variable, width) channel
         BatchNorm over D
         ConvFFN1: grouped 1x1 convs D -> D * ffn_ratio -> D, one group per variable
         ConvFFN2: grouped 1x1 convs, one group per width channel, mixing the variables
    -> flatten each variable's patches                                          [B, C, D * N]
    -> Linear(D * N -> S) -> [B, S, C] -> de-normalize
    with N = L // patch_stride patches.

Feature: each variable's flattened patch representation, the head's input, ``[B, C, D * N]``
(method.md: patch models use the flattened per-variable patch representation);
``feature_dim = d_model * (lookback // patch_stride)``.
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
    check_at_most,
    check_bool,
    check_odd,
    check_positive_int,
    check_probability,
)
from .layers import RevIN, depthwise_conv1d_fft


@dataclass(frozen=True, kw_only=True)
class ModernTCNConfig(ForecastConfig):
    # Structure shared by all of the authors' long-term forecasting scripts; rates from their run.py.
    patch_size: int = 8  # steps per patch (stem kernel)
    patch_stride: int = 4  # steps between patch starts
    d_model: int = 64  # D: channels per variable ("dims")
    ffn_ratio: int = 8  # ConvFFN hidden width = d_model * ffn_ratio
    num_blocks: int = 1  # ModernTCN blocks
    large_size: int = 51  # large depthwise kernel (odd)
    small_size: int = 5  # parallel small kernel for structural re-parameterization (odd)
    dropout: float = 0.05  # dropout inside the ConvFFNs
    head_dropout: float = 0.0  # dropout after the flatten head
    revin: bool = True  # instance-normalize each window (mean/std)
    affine: bool = False  # learnable per-variable affine in RevIN

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(
            self, "patch_size", "patch_stride", "d_model", "ffn_ratio", "num_blocks", "large_size", "small_size"
        )
        check_at_most(self, "patch_size", "lookback")
        check_at_most(self, "patch_stride", "patch_size")
        check_odd(self, "large_size", "small_size")
        check_at_most(self, "small_size", "large_size")
        check_probability(self, "dropout", "head_dropout")
        check_bool(self, "revin", "affine")


# From the ModernTCN authors' long-term scripts (lookback 336-960 there; 720 here). Electricity and
# traffic: the authors use ffn_ratio 8 (about 130 M parameters at C=321, because ConvFFN2 grows with C^2);
# ffn_ratio 1 keeps them CPU-sized. Pass ffn_ratio=8 for the paper's size. Exchange: the authors patch a
# 6-step lookback with patch_size 1; at L=720 the default patching is kept.
PRESETS: dict[str, dict] = {
    "etth1": {"ffn_ratio": 1, "dropout": 0.3},
    "etth2": {"ffn_ratio": 1, "dropout": 0.3},
    "ettm1": {"ffn_ratio": 8, "num_blocks": 3, "dropout": 0.3, "head_dropout": 0.1},
    "ettm2": {"ffn_ratio": 8, "num_blocks": 3, "dropout": 0.3, "head_dropout": 0.2},
    "weather": {"ffn_ratio": 8, "dropout": 0.4},
    "electricity": {"ffn_ratio": 1, "dropout": 0.9},
    "traffic": {"ffn_ratio": 1, "dropout": 0.9},
    "exchange": {"ffn_ratio": 1, "dropout": 0.2, "head_dropout": 0.6},
}


def _conv_and_norm(branch: nn.Sequential) -> tuple[nn.Conv1d, nn.BatchNorm1d]:
    """The two layers of one branch (a Sequential, so that the checkpoint keys stay ``0.*`` and ``1.*``)."""
    return cast(nn.Conv1d, branch[0]), cast(nn.BatchNorm1d, branch[1])  # a Sequential's items are typed as Module


def _fold_batchnorm(branch: nn.Sequential) -> tuple[Tensor, Tensor]:
    """Kernel and bias of one conv (no bias) followed by BatchNorm, folded together (eval statistics)."""
    conv, bn = _conv_and_norm(branch)
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("folding a BatchNorm needs its running statistics (track_running_stats=True)")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [channels]
    return conv.weight * scale[:, None, None], bn.bias - bn.running_mean * scale


class LargeKernelConv(nn.Module):
    """Depthwise large-kernel conv + parallel small-kernel conv, each with BatchNorm (RepLKNet-style).

    The Conv1d modules hold the weights (and the checkpoint layout); the convolutions themselves run
    through one FFT of the input, several times faster than a direct depthwise conv on a CPU.
    """

    def __init__(self, channels: int, large_size: int, small_size: int) -> None:
        super().__init__()
        self.large_size, self.small_size = large_size, small_size
        self.large = nn.Sequential(
            nn.Conv1d(channels, channels, large_size, padding=large_size // 2, groups=channels, bias=False),
            nn.BatchNorm1d(channels),
        )
        self.small = nn.Sequential(
            nn.Conv1d(channels, channels, small_size, padding=small_size // 2, groups=channels, bias=False),
            nn.BatchNorm1d(channels),
        )
        self.merged: nn.Conv1d | None = None

    def forward(self, x: Tensor) -> Tensor:
        merged = self.merged
        if merged is not None:
            (y,) = depthwise_conv1d_fft(x, merged.weight)
            return y if merged.bias is None else y + merged.bias[:, None]  # one bias per channel
        (large_conv, large_norm), (small_conv, small_norm) = _conv_and_norm(self.large), _conv_and_norm(self.small)
        large, small = depthwise_conv1d_fft(x, large_conv.weight, small_conv.weight)
        return large_norm(large) + small_norm(small)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold both branches and their BatchNorms into one conv with a bias (uses the running stats)."""
        large_kernel, large_bias = _fold_batchnorm(self.large)
        small_kernel, small_bias = _fold_batchnorm(self.small)
        pad = (self.large_size - self.small_size) // 2
        channels = large_kernel.shape[0]
        merged = nn.Conv1d(
            channels, channels, self.large_size, padding=self.large_size // 2, groups=channels, bias=False
        )
        merged.to(large_kernel.device, large_kernel.dtype)
        merged.weight.copy_(large_kernel + F.pad(small_kernel, (pad, pad)))
        merged.bias = nn.Parameter(large_bias + small_bias)  # the folded BatchNorms' shift
        del self.large, self.small
        self.merged = merged


class ModernTCNBlock(nn.Module):
    def __init__(self, config: ModernTCNConfig) -> None:
        super().__init__()
        C, D, D_ff = config.n_vars, config.d_model, config.d_model * config.ffn_ratio
        self.depthwise = LargeKernelConv(C * D, config.large_size, config.small_size)
        self.norm = nn.BatchNorm1d(D)
        # ConvFFN1: groups=C, so each variable's D channels are mixed with that variable's weights.
        self.ffn1 = nn.Sequential(
            nn.Conv1d(C * D, C * D_ff, 1, groups=C),
            nn.Dropout(config.dropout),
            nn.GELU(),
            nn.Conv1d(C * D_ff, C * D, 1, groups=C),
            nn.Dropout(config.dropout),
        )
        # ConvFFN2: on the width-major layout with groups=D, so each width channel mixes the C variables.
        self.ffn2 = nn.Sequential(
            nn.Conv1d(D * C, D * C * config.ffn_ratio, 1, groups=D),
            nn.Dropout(config.dropout),
            nn.GELU(),
            nn.Conv1d(D * C * config.ffn_ratio, D * C, 1, groups=D),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        B, C, D, N = x.shape
        y = self.depthwise(x.reshape(B, C * D, N))  # [B, C, D, N] -> [B, C * D, N]
        y = self.norm(y.reshape(B * C, D, N))  # [B, C * D, N] -> [B * C, D, N]
        y = self.ffn1(y.reshape(B, C * D, N))  # [B * C, D, N] -> [B, C * D, N]
        y = y.reshape(B, C, D, N).transpose(1, 2).reshape(B, D * C, N)  # [B, C * D, N] -> [B, D * C, N]
        y = self.ffn2(y)  # [B, D * C, N]
        y = y.reshape(B, D, C, N).transpose(1, 2)  # [B, D * C, N] -> [B, C, D, N]
        return x + y


class ModernTCN(Forecaster):
    config_class = ModernTCNConfig
    presets = PRESETS
    config: ModernTCNConfig  # the model's own config (the base class types it as ForecastConfig)

    def __init__(self, config: ModernTCNConfig) -> None:
        super().__init__(config)
        L, S, C, D = config.lookback, config.horizon, config.n_vars, config.d_model
        self.n_patches = L // config.patch_stride
        self.norm = RevIN(C, scale=True, affine=config.affine) if config.revin else None
        self.stem = nn.Sequential(
            nn.Conv1d(1, D, config.patch_size, stride=config.patch_stride),
            nn.BatchNorm1d(D),
        )
        self.blocks = nn.ModuleList(ModernTCNBlock(config) for _ in range(config.num_blocks))
        self.head = nn.Linear(D * self.n_patches, S)
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.feature_dim = D * self.n_patches

    def forward(self, x: Tensor) -> Forecast:
        B, L, C = x.shape
        cfg = self.config
        if self.norm is not None:
            x, stats = self.norm(x)
        x = x.transpose(1, 2).reshape(B * C, 1, L)  # [B, L, C] -> [B * C, 1, L]
        x = F.pad(x, (0, cfg.patch_size - cfg.patch_stride), mode="replicate")  # [B * C, 1, L + pad]
        x = self.stem(x)  # [B * C, D, N]
        x = x.reshape(B, C, cfg.d_model, self.n_patches)  # [B * C, D, N] -> [B, C, D, N]
        for block in self.blocks:
            x = block(x)  # [B, C, D, N]
        feature = x.flatten(start_dim=2)  # [B, C, D, N] -> [B, C, D * N]
        y = self.head_dropout(self.head(feature)).transpose(1, 2)  # [B, C, S] -> [B, S, C]
        if self.norm is not None:
            y = self.norm.inverse(y, stats)
        return Forecast(y, feature)

    def structural_reparam(self) -> ModernTCN:
        """Fold every small kernel and its BatchNorms into the large kernel, for inference.

        Call in eval mode after training; outputs stay the same (up to rounding) and inference is
        faster, but the state dict changes layout, so save checkpoints before calling it.
        """
        for module in self.modules():
            if isinstance(module, LargeKernelConv) and module.merged is None:
                module.merge()
        return self
