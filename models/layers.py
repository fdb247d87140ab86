"""Small blocks shared by several forecasters (each tested in tests/test_models.py).

- ``RevIN``: per-window, per-variable instance normalization and its inverse (Kim et al., "Reversible
  Instance Normalization for Accurate Time-Series Forecasting against Distribution Shift", ICLR 2022).
  The same block covers iTransformer's "non-stationary" normalization (mean/std, no affine) and the
  student's mean-only centering.
- ``MovingAverage`` / ``SeriesDecomposition``: trend = moving average with edge-replicated padding,
  seasonal = input - trend (Autoformer / DLinear).
- ``num_patches`` / ``patchify``: PatchTST's end padding and patching.
- ``depthwise_conv1d_fft``: same-padded depthwise convolutions through one FFT of the input (ModernTCN's
  large kernels).
- ``MultiHeadAttention`` / ``TransformerEncoderLayer``: the post-norm encoder layer of the Transformer
  forecasters (iTransformer with LayerNorm, PatchTST with BatchNorm).
"""


from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --- instance normalization -------------------------------------------------------------------------


class NormStats(NamedTuple):
    """Per-window statistics that ``RevIN.inverse`` needs; shapes [B, 1, C]."""

    mean: Tensor
    std: Tensor | None  # None when only the mean is removed


class RevIN(nn.Module):
    """Instance normalization over time, per window and variable, reversible.

    ``scale=False`` only subtracts the mean; ``affine=True`` adds a learnable per-variable weight and
    bias after normalizing (undone first by ``inverse``). Statistics are returned, not stored on the
    module, so one module can serve concurrent calls.
    """

    def __init__(self, n_vars: int, *, scale: bool = True, affine: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = scale
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_vars)) if affine else None
        self.bias = nn.Parameter(torch.zeros(n_vars)) if affine else None

    def forward(self, x: Tensor) -> tuple[Tensor, NormStats]:
        B, L, C = x.shape
        mean = x.mean(dim=1, keepdim=True).detach()  # [B, 1, C]
        x = x - mean
        std = None
        if self.scale:
            std = torch.sqrt(x.var(dim=1, keepdim=True, correction=0) + self.eps).detach()  # [B, 1, C]
            x = x / std
        if self.weight is not None and self.bias is not None:  # affine: both or neither
            x = x * self.weight + self.bias
        return x, NormStats(mean, std)

    def inverse(self, y: Tensor, stats: NormStats) -> Tensor:
        """Map a normalized prediction ``y: [B, S, C]`` back with the input window's statistics."""
        if self.weight is not None and self.bias is not None:
            y = (y - self.bias) / (self.weight + self.eps * self.eps)
        if stats.std is not None:
            y = y * stats.std
        return y + stats.mean


INSTANCE_NORMS = ("none", "mean", "revin")


def instance_norm(kind: str, n_vars: int) -> RevIN | None:
    """The students' norm option: "none", "mean" (centering only) or "revin" (mean/std + affine)."""
    if kind == "none":
        return None
    if kind == "mean":
        return RevIN(n_vars, scale=False)
    if kind == "revin":
        return RevIN(n_vars, scale=True, affine=True)
    raise ValueError(f"norm must be one of {list(INSTANCE_NORMS)}, got {kind!r}")


# --- series decomposition ---------------------------------------------------------------------------


class MovingAverage(nn.Module):
    """Moving average along time (dim 1) that keeps the length: edges are replicated.

    An odd ``kernel_size`` k pads (k - 1) / 2 steps on each side, as in Autoformer/DLinear; an even one
    pads one step more on the right.
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        k = self.kernel_size
        x = x.transpose(1, 2)  # [B, T, C] -> [B, C, T]
        x = F.pad(x, ((k - 1) // 2, k // 2), mode="replicate")  # [B, C, T + k - 1]
        # A depthwise convolution with a constant 1/k filter: the same average as avg_pool1d(k, stride=1)
        # up to float rounding, and faster on CPU.
        kernel = x.new_full((C, 1, k), 1.0 / k)
        x = F.conv1d(x, kernel, groups=C)  # [B, C, T]
        return x.transpose(1, 2)  # [B, C, T] -> [B, T, C]


class SeriesDecomposition(nn.Module):
    """Split ``x: [B, T, C]`` into (seasonal, trend) with trend = moving average along time."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.moving_average = MovingAverage(kernel_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        trend = self.moving_average(x)
        return x - trend, trend


# --- patching (PatchTST) ----------------------------------------------------------------------------


def num_patches(length: int, patch_len: int, stride: int) -> int:
    """Patches ``patchify`` makes from ``length`` steps (the series is first extended by ``stride``)."""
    return (length + stride - patch_len) // stride + 1


def patchify(x: Tensor, patch_len: int, stride: int) -> Tensor:
    """Replicate the last step ``stride`` times, then cut overlapping patches along the last axis."""
    B, C, L = x.shape
    x = F.pad(x, (0, stride), mode="replicate")  # [B, C, L + stride]
    return x.unfold(-1, patch_len, stride)  # [B, C, P, patch_len]


# --- large-kernel depthwise convolution (ModernTCN) ---------------------------------------------------


def depthwise_conv1d_fft(x: Tensor, *kernels: Tensor) -> list[Tensor]:
    """``F.conv1d(x, k, padding=K // 2, groups=C)`` for each odd kernel ``k`` [C, 1, K], sharing one FFT of x.

    oneDNN's direct depthwise convolution is slow on a CPU; with ModernTCN's long kernels the FFT
    route makes its training steps and inference faster (BENCHMARKS.md, "ModernTCN: direct vs FFT
    depthwise convolution"). Computed in at least float32, so it also runs under bfloat16 autocast,
    which torch.fft does not support.
    """
    N = x.shape[-1]
    K = max(k.shape[-1] for k in kernels)
    n = 1 << (N + K - 2).bit_length()  # a power of two >= N + K - 1: no circular wrap-around
    dtype = torch.promote_types(x.dtype, torch.float32)  # float16/bfloat16 -> float32
    spectrum = torch.fft.rfft(x.to(dtype), n=n)  # [B, C, N] -> [B, C, n // 2 + 1]
    outputs = []
    for kernel in kernels:
        half = kernel.shape[-1] // 2
        # Cross-correlation = convolution with the flipped kernel; the "same" part starts at half.
        kernel_spectrum = torch.fft.rfft(kernel.to(dtype)[:, 0].flip(-1), n=n)  # [C, K] -> [C, n // 2 + 1]
        full = torch.fft.irfft(spectrum * kernel_spectrum, n=n)  # [B, C, n]
        outputs.append(full[..., half : half + N].to(x.dtype))  # [B, C, N]
    return outputs


# --- Transformer encoder ----------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Full (softmax) self-attention with ``n_heads`` heads of width d_model / n_heads."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        N, T, D = x.shape
        H = self.n_heads
        q = self.query(x).view(N, T, H, D // H).transpose(1, 2)  # [N, T, D] -> [N, H, T, D/H]
        k = self.key(x).view(N, T, H, D // H).transpose(1, 2)  # [N, T, D] -> [N, H, T, D/H]
        v = self.value(x).view(N, T, H, D // H).transpose(1, 2)  # [N, T, D] -> [N, H, T, D/H]
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # [N, H, T, D/H]
        y = y.transpose(1, 2).reshape(N, T, D)  # [N, H, T, D/H] -> [N, T, D]
        return self.out(y)


class TokenBatchNorm(nn.Module):
    """BatchNorm1d over the width of tokens ``[N, T, D]`` (statistics over N and T), as PatchTST uses."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)  # [N, T, D] -> [N, D, T] -> [N, T, D]


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: x = norm(x + attn(x)); x = norm(x + ffn(x)).

    ``norm="layer"`` (Vaswani et al.; iTransformer) or ``norm="batch"`` (PatchTST).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        dropout: float,
        attn_dropout: float,
        activation: str = "gelu",
        norm: str = "layer",
    ) -> None:
        super().__init__()
        if norm not in ("layer", "batch"):
            raise ValueError(f"norm must be 'layer' or 'batch', got {norm!r}")
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.attention = MultiHeadAttention(d_model, n_heads, attn_dropout)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, d_ff),
            nn.GELU() if activation == "gelu" else nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(d_ff, d_model),
        )
        self.dropout = nn.Dropout(dropout)
        make_norm = nn.LayerNorm if norm == "layer" else TokenBatchNorm
        self.norm_attention = make_norm(d_model)
        self.norm_feed_forward = make_norm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm_attention(x + self.dropout(self.attention(x)))  # [N, T, D]
        return self.norm_feed_forward(x + self.dropout(self.feed_forward(x)))  # [N, T, D]
