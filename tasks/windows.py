"""Splits and windows. A window is an index, not a copy: one standardized series [T, C] per
dataset, and a window is the row where its lookback starts. Materializing 720-step windows would
multiply the data by ~800, so batches are sliced out of the series when they are needed.

Convention (Time-Series-Library): a split owns rows [start, end); its windows may read their
lookback from the split before (they start up to L rows before `start`), but their targets stay
inside the split.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

from timedistill.tasks.errors import DataError

SPLITS = ("train", "val", "test")
ETT_MONTH_DAYS = 30
INFERENCE_WINDOWS = 256  # windows of one forward-only batch, at most
INFERENCE_VALUES = 2**24  # input values of one forward-only batch, at most: 64 MiB of float32
Span = tuple[int, int]


class RollingSizes(NamedTuple):
    """Steps of the newest splits for split=rolling (train None: every older row)."""

    val: int
    test: int
    train: int | None = None


def split_rows(rule: str, n_rows: int, ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
               source: str = "data", rolling: RollingSizes | None = None) -> dict[str, Span]:
    """Row ranges [start, end) of train, val and test."""
    if rule in ("ett-hour", "ett-minute"):
        month = ETT_MONTH_DAYS * (24 if rule == "ett-hour" else 96)
        borders = [0, 12 * month, 16 * month, 20 * month]  # 12/4/4 months; later rows unused
        if n_rows < borders[-1]:
            raise DataError(f"{source}: split {rule!r} needs {borders[-1]} rows (20 months of 30 "
                            f"days), the series has {n_rows}")
    elif rule == "ratio":
        n_train, n_test = int(n_rows * ratios[0]), int(n_rows * ratios[2])
        borders = [0, n_train, n_rows - n_test, n_rows]
    elif rule == "rolling" and rolling is not None:
        # the newest rows are test, the ones before them val: a series that grows moves both
        val_start = n_rows - rolling.test - rolling.val
        if val_start <= 0:
            raise DataError(f"{source}: data.val_size + data.test_size ({rolling.val} + {rolling.test} steps) "
                            f"leave no rows to train on (the series has {n_rows})")
        train_start = max(val_start - rolling.train, 0) if rolling.train else 0
        borders = [train_start, val_start, n_rows - rolling.test, n_rows]
    else:
        raise DataError(f"{source}: unknown split rule {rule!r} (allowed: ett-hour, ett-minute, ratio, rolling)")
    return {split: (borders[i], borders[i + 1]) for i, split in enumerate(SPLITS)}


def window_starts(span: Span, lookback: int, horizon: int) -> np.ndarray:
    """First rows of every window whose target lies inside `span`."""
    start, end = span
    first, last = max(start - lookback, 0), end - lookback - horizon
    return np.arange(first, last + 1, dtype=np.int64) if last >= first else np.zeros(0, np.int64)


def window_counts(rows: dict[str, Span], lookback: int, horizon: int) -> dict[str, int]:
    return {split: len(window_starts(span, lookback, horizon)) for split, span in rows.items()}


def window_index(rows: dict[str, Span], lookback: int, horizon: int) -> pa.Table:
    """The window index as Arrow: (split, window_id, start); window_id counts from 0 per split."""
    parts = []
    for split in SPLITS:
        starts = window_starts(rows[split], lookback, horizon)
        parts.append(pa.table({
            "split": pa.array([split] * len(starts), pa.string()),
            "window_id": pa.array(np.arange(len(starts), dtype=np.int64)),
            "start": pa.array(starts),
        }))
    return pa.concat_tables(parts)


def inference_batch(lookback: int, variables: int) -> int:
    """Windows per batch where a model only runs forward (validation, test, the teacher cache):
    INFERENCE_WINDOWS, or fewer where that many windows of this many variables would hold more
    than INFERENCE_VALUES input values. Activations grow with windows x variables (an iTransformer's
    attention with the variables squared): 256 windows of 862 variables took gigabytes in one
    evaluation pass. At lookback 720 the batch stays at 256 up to 91 variables (every shipped
    config); Electricity's 321 get 72 windows, Traffic's 862 get 27."""
    return max(1, min(INFERENCE_WINDOWS, INFERENCE_VALUES // (lookback * variables)))


class WindowBatcher:
    """Builds (x [B, L, C], y [B, S, C]) batches from the series without copying it per window.

    The series is C-contiguous [T, C], so window s is one contiguous run of memory, rows
    s .. s+L-1. A sliding view over the flat array with a step of C rows exposes every window as
    a row of a [N, L*C] view (no data copied); indexing it with a batch of starts copies exactly
    that batch once, as contiguous blocks, and a reshape (free) gives [B, L, C].
    """

    def __init__(self, series: np.ndarray, lookback: int, horizon: int) -> None:
        if series.ndim != 2:
            raise ValueError(f"series must be [T, C], got shape {series.shape}")
        self.series = np.ascontiguousarray(series)
        self.lookback, self.horizon = lookback, horizon
        n_vars = series.shape[1]
        flat = self.series.reshape(-1)  # [T*C], a view
        n_windows = series.shape[0] - lookback - horizon + 1
        view = np.lib.stride_tricks.sliding_window_view
        self._x = view(flat, lookback * n_vars)[::n_vars][:n_windows]  # [N, L*C] view
        self._y = view(flat[lookback * n_vars :], horizon * n_vars)[::n_vars][:n_windows]  # [N, S*C] view

    def __len__(self) -> int:
        return self._x.shape[0]

    @property
    def inference_batch(self) -> int:
        return inference_batch(self.lookback, self.series.shape[1])

    def __call__(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        starts = np.asarray(starts)
        batch, n_vars = len(starts), self.series.shape[1]
        x = self._x[starts].reshape(batch, self.lookback, n_vars)  # [B, L*C] copy -> [B, L, C]
        y = self._y[starts].reshape(batch, self.horizon, n_vars)  # [B, S*C] copy -> [B, S, C]
        return torch.from_numpy(x), torch.from_numpy(y)


class WindowDataset(torch.utils.data.Dataset):
    """The windows of one split as a torch Dataset; `__getitems__` lets a DataLoader fetch a
    whole batch with one slice instead of one item at a time."""

    def __init__(self, series: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> None:
        self.batcher = WindowBatcher(series, lookback, horizon)
        self.starts = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batcher(self.starts[index : index + 1])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batcher(self.starts[np.asarray(indices)])

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """For `DataLoader(dataset, batch_size=..., collate_fn=WindowDataset.collate)`: the batch
        already arrives stacked."""
        return batch


def batch_ranges(n: int, batch_size: int, *, shuffle: bool = False,
                 rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Positions 0..n-1 in batches (every window counts: the last batch may be short)."""
    order = (rng or np.random.default_rng()).permutation(n) if shuffle else np.arange(n)
    for begin in range(0, n, batch_size):
        yield order[begin : begin + batch_size]
