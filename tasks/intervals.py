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


@torch.inference_mode()
def calibrate(model: QuantileStudent, batcher: WindowBatcher, val_starts: np.ndarray, test_starts: np.ndarray,
              batch_size: int = 256) -> Intervals:
    """Set `model.widen` from the validation windows and score the intervals on the test ones."""
    model.eval()
    levels, m = model.levels, model.median_index
    scores, raw_inside = [], torch.zeros(m, dtype=torch.float64)
    for chunk in batches(np.arange(len(val_starts)), batch_size):
        x, y = batcher(val_starts[chunk])
        _, quantiles = model.quantiles(x, calibrated=False)  # [B, Q, S, C]
        below, above = quantiles[:, :m], quantiles[:, m + 1 :].flip(1)  # interval k: [B, m, S, C] each
        score = torch.maximum(below - y.unsqueeze(1), y.unsqueeze(1) - above)  # > 0 outside
        scores.append(score)
        raw_inside += (score <= 0).sum(dim=(0, 2, 3)).double()
    score = torch.cat(scores)  # [n, m, S, C]
    n = len(score)
    model.widen.copy_(torch.stack([
        score[:, k].kthvalue(min(math.ceil((n + 1) * (levels[-1 - k] - levels[k])), n), dim=0).values
        for k in range(m)]))  # [m, S, C]
    val_coverage_raw = (raw_inside / (score[:, 0].numel())).tolist()
    test = score_intervals(model, batcher, test_starts, batch_size)
    intervals = [IntervalScore(lower=levels[k], upper=levels[-1 - k], val_coverage_raw=val_coverage_raw[k],
                               test_coverage_raw=test["raw"][k], test_coverage=test["calibrated"][k],
                               test_width=test["width"][k]) for k in range(m)]
    return Intervals(levels=list(levels), method=METHOD, calibration_windows=n, intervals=intervals)


def score_intervals(model: QuantileStudent, batcher: WindowBatcher, starts: np.ndarray,
                    batch_size: int) -> dict[str, list[float]]:
    """Per interval: the share of values inside it, uncorrected ("raw") and corrected, and the
    corrected interval's mean width."""
    m = model.median_index
    sums = {name: torch.zeros(m, dtype=torch.float64) for name in ("raw", "calibrated", "width")}
    count = 0
    for chunk in batches(np.arange(len(starts)), batch_size):
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
