"""Quantile outputs for any student: intervals around its forecast (student.quantiles).

The wrapped student's own forecast is the median, so the point forecast, the distillation terms
and every point score stay what they were. A linear head on the student's feature gives the
distances from the median to the other quantiles, made positive and summed outward, so that the
quantiles never cross. After training, a conformal correction per central interval, forecast
step and variable (``widen``, set from the validation split by tasks/intervals.py) moves both
ends of that interval out (or in) by the same amount; it is a buffer, saved with the weights.

    x [B, L, C] -> student -> median [B, S, C], feature [B, C, D]
    feature -> ReLU -> Linear(D -> (Q - 1) * S) -> softplus              gaps [B, Q - 1, S, C]
    below: gaps of the lower levels summed towards the lowest, above: towards the highest
    quantiles [B, Q, S, C] = median - below | median | median + above    (then + / - widen)

Levels are sorted, symmetric around 0.5 and include it (0.1, 0.5, 0.9): level k and level
Q - 1 - k bound the central interval of nominal coverage ``levels[Q-1-k] - levels[k]``.

The gaps are in the standardized space of the whole series and are not rescaled by a window's
own spread. The head sees only what the student's feature carries of that spread: all of it
under the MLP's default norm (the window mean is subtracted, the amplitude kept), none of it
under RevIN, which divides it out. Either way the conformal correction fixes the average
coverage per step and variable, not the coverage of unusually calm or wild windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Forecast, Forecaster


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """The levels as a tuple; ValueError naming what is wrong with them."""
    levels = tuple(float(level) for level in levels)
    if not levels or any(not 0.0 < level < 1.0 for level in levels):
        raise ValueError(f"quantiles must be levels strictly between 0 and 1, got {list(levels)}")
    if list(levels) != sorted(set(levels)):
        raise ValueError(f"quantiles must be sorted and distinct, got {list(levels)}")
    if 0.5 not in levels or any(abs(a + b - 1.0) > 1e-9 for a, b in zip(levels, reversed(levels), strict=True)):
        raise ValueError(f"quantiles must include 0.5 and be symmetric around it (0.1, 0.5, 0.9), got {list(levels)}")
    return levels


class QuantileStudent(Forecaster):
    """A student with quantile outputs; ``forward`` is the student's own (the median)."""

    widen: Tensor  # [Q // 2, S, C], a buffer: the conformal correction per central interval

    def __init__(self, student: Forecaster, levels: Sequence[float]) -> None:
        super().__init__(student.config)
        self.student = student
        self.levels = check_levels(levels)
        Q, S, C, D = len(self.levels), student.config.horizon, student.config.n_vars, student.feature_dim
        self.median_index = Q // 2
        self.spread = nn.Sequential(nn.ReLU(), nn.Linear(D, (Q - 1) * S))
        self.register_buffer("widen", torch.zeros(Q // 2, S, C))  # conformal correction per interval
        self.feature_dim = student.feature_dim

    def forward(self, x: Tensor) -> Forecast:
        return self.student(x)

    def quantiles(self, x: Tensor, calibrated: bool = True) -> tuple[Forecast, Tensor]:
        """The student's forecast and its quantiles [B, Q, S, C], in the input's (standardized)
        space; `calibrated` applies the conformal correction (training leaves it out)."""
        forecast = self.student(x)
        median, m = forecast.prediction, self.median_index
        B, S, C = median.shape
        gaps = F.softplus(self.spread(forecast.feature))  # [B, C, D] -> [B, C, (Q-1)*S]
        gaps = gaps.view(B, C, 2 * m, S).permute(0, 2, 3, 1)  # [B, Q-1, S, C]
        below = gaps[:, :m].flip(1).cumsum(1).flip(1)  # [B, m, S, C]: level k lies below the median by these
        above = gaps[:, m:].cumsum(1)  # [B, m, S, C]: level m + 1 + j lies above it by these
        if calibrated:
            below, above = below + self.widen, above + self.widen.flip(0)
        centre = median.unsqueeze(1)  # [B, 1, S, C]
        quantiles = torch.cat([centre - below, centre, centre + above], dim=1)  # [B, Q, S, C]
        return forecast, quantiles.sort(dim=1).values  # a negative correction must not cross levels


def pinball_loss(quantiles: Tensor, target: Tensor, levels: Sequence[float]) -> Tensor:
    """The mean pinball (quantile) loss of quantiles [B, Q, S, C] against target [B, S, C]."""
    tau = torch.tensor(levels, dtype=quantiles.dtype, device=quantiles.device).view(1, -1, 1, 1)
    diff = target.unsqueeze(1) - quantiles
    return torch.maximum(tau * diff, (tau - 1) * diff).mean()
