"""Windows are an index: every window's x and y must be exactly the right rows of the series."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from timedistill.store.scaler import Scaler
from timedistill.tasks.errors import DataError
from timedistill.tasks.evaluate import score_windows
from timedistill.tasks.windows import (
    INFERENCE_VALUES,
    WindowBatcher,
    WindowDataset,
    batch_ranges,
    inference_batch,
    split_rows,
    window_counts,
    window_index,
    window_starts,
)


@st.composite
def series_and_windows(draw):
    lookback = draw(st.integers(1, 30))
    horizon = draw(st.integers(1, 20))
    n_vars = draw(st.integers(1, 5))
    rows = draw(st.integers(lookback + horizon, lookback + horizon + 60))
    seed = draw(st.integers(0, 2**31 - 1))
    series = np.random.default_rng(seed).standard_normal((rows, n_vars)).astype(np.float32)
    n_windows = rows - lookback - horizon + 1
    starts = draw(st.lists(st.integers(0, n_windows - 1), min_size=1, max_size=40))
    return series, lookback, horizon, np.array(starts)


@settings(max_examples=150, deadline=None)
@given(series_and_windows())
def test_every_window_is_the_right_rows(case):
    series, lookback, horizon, starts = case
    x, y = WindowBatcher(series, lookback, horizon)(starts)
    assert x.shape == (len(starts), lookback, series.shape[1]) and x.dtype == torch.float32
    assert y.shape == (len(starts), horizon, series.shape[1])
    for i, start in enumerate(starts):
        assert np.array_equal(x[i].numpy(), series[start : start + lookback])
        assert np.array_equal(y[i].numpy(), series[start + lookback : start + lookback + horizon])


@settings(max_examples=100, deadline=None)
@given(n_rows=st.integers(50, 3000), lookback=st.integers(1, 40), horizon=st.integers(1, 20))
def test_split_windows_cover_each_target_row_once_and_never_cross(n_rows, lookback, horizon):
    rows = split_rows("ratio", n_rows)
    assert rows["train"][0] == 0 and rows["test"][1] == n_rows
    assert rows["train"][1] == int(0.7 * n_rows) and rows["test"][1] - rows["test"][0] == int(0.2 * n_rows)
    for split, (start, end) in rows.items():
        starts = window_starts((start, end), lookback, horizon)
        if len(starts) == 0:
            continue
        targets_begin = starts + lookback
        assert targets_begin.min() >= start and (targets_begin + horizon).max() <= end  # targets inside
        assert starts.min() >= 0
        if split != "train":
            assert starts.min() == max(start - lookback, 0)  # history may come from the split before


def test_ett_borders_and_counts():
    rows = split_rows("ett-hour", 17420)
    assert rows == {"train": (0, 8640), "val": (8640, 11520), "test": (11520, 14400)}
    assert window_counts(rows, 720, 96) == {"train": 7825, "val": 2785, "test": 2785}
    minute = split_rows("ett-minute", 69680)
    assert minute["test"] == (46080, 57600)
    with pytest.raises(DataError, match="needs 14400 rows"):
        split_rows("ett-hour", 1000)


def test_window_index_is_arrow_and_matches_starts():
    rows = split_rows("ratio", 500)
    index = window_index(rows, 48, 12)
    assert index.column_names == ["split", "window_id", "start"]
    for split, span in rows.items():
        part = index.filter(index["split"].to_numpy(zero_copy_only=False) == split)
        assert part["window_id"].to_pylist() == list(range(part.num_rows))
        assert np.array_equal(part["start"].to_numpy(), window_starts(span, 48, 12))


def test_batcher_does_not_copy_the_series():
    series = np.arange(200, dtype=np.float32).reshape(100, 2)
    batcher = WindowBatcher(series, 10, 5)
    assert np.shares_memory(batcher._x, series) and np.shares_memory(batcher._y, series)  # views
    x, y = batcher(np.array([3]))
    assert x.is_contiguous() and y.is_contiguous()
    assert not np.shares_memory(x.numpy(), series)  # a batch is its own copy: training may mutate it


def test_dataset_works_with_a_dataloader():
    series = np.random.default_rng(0).standard_normal((120, 3)).astype(np.float32)
    starts = window_starts((0, 120), 20, 10)
    dataset = WindowDataset(series, starts, 20, 10)
    x0, y0 = dataset[5]
    assert torch.equal(x0, torch.from_numpy(series[5:25])) and torch.equal(y0, torch.from_numpy(series[25:35]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=WindowDataset.collate)
    batches = list(loader)
    assert sum(len(x) for x, _ in batches) == len(dataset)  # every window counts, no drop_last
    assert torch.equal(batches[0][0][5], x0)


def test_batch_ranges_cover_everything_once():
    order = np.concatenate(list(batch_ranges(103, 10, shuffle=True, rng=np.random.default_rng(1))))
    assert sorted(order.tolist()) == list(range(103))
    assert [len(b) for b in batch_ranges(25, 10)] == [10, 10, 5]


def test_standardize_roundtrip():
    values = np.random.default_rng(2).normal(5, 3, (50, 4))
    values[:, 2] = 7.0  # a constant column: centred, not divided by zero
    scaler = Scaler.fit(values)
    assert scaler.std[2] == 1.0
    z = scaler.standardize(values)
    assert z.dtype == np.float32 and z.flags.c_contiguous
    assert np.allclose(z.mean(0), 0, atol=1e-5) and np.allclose(np.delete(z.std(0), 2), 1, atol=1e-5)
    assert np.allclose(scaler.unstandardize(z), values, atol=1e-4)


def test_forward_only_batches_shrink_with_the_variables():
    assert inference_batch(720, 7) == inference_batch(720, 21) == inference_batch(720, 91) == 256  # shipped data
    assert (inference_batch(720, 321), inference_batch(720, 862)) == (72, 27)  # Electricity, Traffic
    assert inference_batch(720, 862) * 720 * 862 <= INFERENCE_VALUES < (inference_batch(720, 862) + 1) * 720 * 862
    assert inference_batch(10**6, 100) == 1  # never none
    assert WindowBatcher(np.zeros((900, 321), np.float32), 720, 96).inference_batch == 72


class LastValue:
    """A forecaster that repeats each variable's last observed value."""

    lookback, horizon = 720, 24

    def forecast(self, history: np.ndarray) -> np.ndarray:  # [B, L, C] -> [B, S, C]
        return np.repeat(history[:, -1:], self.horizon, axis=1)


def test_a_score_over_many_forward_batches_is_the_score_over_all_windows():
    values = np.random.default_rng(3).standard_normal((1000, 400)).astype(np.float32)
    starts = window_starts((0, 1000), 720, 24)  # 257 windows: 5 batches of 58 (at 400 variables)
    scaler = Scaler.fit(values)
    x, y = WindowBatcher(values, 720, 24)(starts)
    error = (LastValue().forecast(x.numpy()) - y.numpy()) / np.asarray(scaler.std)
    assert score_windows(LastValue(), values, starts, scaler) == pytest.approx(float(np.square(error).mean()), rel=1e-6)
