"""Calibrated intervals for a quantile student (student.quantiles), set after training.

Split conformal quantile regression (Romano, Patterson, Candes, "Conformalized Quantile
Regression", NeurIPS 2019), per central interval, forecast step and variable: on the validation
split, the score of a value is how far it falls outside the student's raw interval (negative
inside); the interval of nominal coverage 1 - a is moved out on both sides by the
ceil((n + 1)(1 - a))-th smallest of the n windows' scores. On exchangeable windows that covers
at least 1 - a of new values; on a series whose test split drifts from its validation split it
is only as good as the two are alike, which is why the test coverage is measured and reported.
The validation split is the one early stopping already used to pick the epoch; the test split
plays no part.

A series drifts, so by default the validation windows do not count alike: a window's weight
halves every `student.calibration_half_life` of age, counted back from the newest, and the
correction is the weighted quantile of the scores, the new value counting with weight 1 (Barber,
Candes, Ramdas, Tibshirani, "Conformal prediction beyond exchangeability", Annals of Statistics
2023). On exchangeable windows that still covers at least 1 - a minus a term that grows with how
unequal the weights are; on a drifting series it follows the newest behaviour. On ETTh1, whose
validation months are harder than its test months, weighing all windows alike covered the test
split well above the nominal share (BENCHMARKS.md, "Intervals").
"""

from __future__ import annotations

import math

import numpy as np
import torch

from timedistill.models import QuantileStudent
from timedistill.store.records import Intervals, IntervalScore
from timedistill.tasks.loops import batches
from timedistill.tasks.windows import WindowBatcher

METHOD = "split conformal (CQR), per interval, forecast step and variable"


def method(half_life: float | None) -> str:
    if half_life is None:
        return METHOD
    return f"{METHOD}; a window's weight halves every {half_life:g} windows of age"


@torch.inference_mode()
def calibrate(model: QuantileStudent, batcher: WindowBatcher, val_starts: np.ndarray, test_starts: np.ndarray,
              half_life: float | None = None) -> Intervals:
    """Set `model.widen` from the validation windows (in time order, the newest last) and score
    the intervals on the test ones. `half_life`: in windows; None weighs every window alike."""
    model.eval()
    levels, m = model.levels, model.median_index
    scores, raw_inside = [], torch.zeros(m, dtype=torch.float64)
    for chunk in batches(np.arange(len(val_starts)), batcher.inference_batch):
        x, y = batcher(val_starts[chunk])
        _, quantiles = model.quantiles(x, calibrated=False)  # [B, Q, S, C]
        below, above = quantiles[:, :m], quantiles[:, m + 1 :].flip(1)  # interval k: [B, m, S, C] each
        score = torch.maximum(below - y.unsqueeze(1), y.unsqueeze(1) - above)  # > 0 outside
        scores.append(score)
        raw_inside += (score <= 0).sum(dim=(0, 2, 3)).double()
    score = torch.cat(scores)  # [n, m, S, C]
    n = len(score)
    if half_life is None:
        model.widen.copy_(torch.stack([
            score[:, k].kthvalue(min(math.ceil((n + 1) * (levels[-1 - k] - levels[k])), n), dim=0).values
            for k in range(m)]))  # [m, S, C]
    else:
        weight = recency_weights(n, half_life)
        model.widen.copy_(torch.stack([weighted_quantile(score[:, k], weight, levels[-1 - k] - levels[k])
                                       for k in range(m)]))  # [m, S, C]
    val_coverage_raw = (raw_inside / (score[:, 0].numel())).tolist()
    test = score_intervals(model, batcher, test_starts)
    intervals = [IntervalScore(lower=levels[k], upper=levels[-1 - k], val_coverage_raw=val_coverage_raw[k],
                               test_coverage_raw=test["raw"][k], test_coverage=test["calibrated"][k],
                               test_width=test["width"][k]) for k in range(m)]
    return Intervals(levels=list(levels), method=method(half_life), calibration_windows=n,
                     half_life_windows=half_life, intervals=intervals)


def recency_weights(n: int, half_life: float) -> torch.Tensor:
    """[n] weights of n windows in time order: 1 for the newest, halving every `half_life`."""
    age = torch.arange(n - 1, -1, -1, dtype=torch.float64)
    return 0.5 ** (age / half_life)


def weighted_quantile(score: torch.Tensor, weight: torch.Tensor, share: float) -> torch.Tensor:
    """Per cell of score [n, ...]: the smallest score whose cumulative weight reaches `share` of
    the total, the new value counting with weight 1 beyond the largest score (at most the
    largest score, as the unweighted rank is capped at n)."""
    ordered, order = score.sort(dim=0)
    mass = weight.to(score.dtype)[order].cumsum(dim=0) / (weight.sum() + 1)  # [n, ...]
    rank = (mass < share).sum(dim=0, keepdim=True).clamp(max=len(score) - 1)
    return ordered.gather(0, rank).squeeze(0)


def score_intervals(model: QuantileStudent, batcher: WindowBatcher, starts: np.ndarray) -> dict[str, list[float]]:
    """Per interval: the share of values inside it, uncorrected ("raw") and corrected, and the
    corrected interval's mean width."""
    m = model.median_index
    sums = {name: torch.zeros(m, dtype=torch.float64) for name in ("raw", "calibrated", "width")}
    count = 0
    for chunk in batches(np.arange(len(starts)), batcher.inference_batch):
        x, y = batcher(starts[chunk])
        for name, calibrated in (("raw", False), ("calibrated", True)):
            _, quantiles = model.quantiles(x, calibrated=calibrated)
            below, above = quantiles[:, :m], quantiles[:, m + 1 :].flip(1)  # [B, m, S, C]
            inside = (below <= y.unsqueeze(1)) & (y.unsqueeze(1) <= above)
            sums[name] += inside.sum(dim=(0, 2, 3)).double()
            if calibrated:
                sums["width"] += (above - below).sum(dim=(0, 2, 3)).double()
        count += y.numel()
    return {name: (total / max(count, 1)).tolist() for name, total in sums.items()}
