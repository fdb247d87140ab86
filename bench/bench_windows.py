"""Batch-building throughput: the strided-view WindowBatcher against naive per-window loops.

Reproduce with:  python -m bench.bench_windows

"naive loop (Dataset + collate)" is the Time-Series-Library pattern: a Dataset whose __getitem__
slices one window and a DataLoader that collates 32 of them; "naive loop (np.stack)" slices each
window in Python and stacks. Every method returns identical (x [B, L, C], y [B, S, C]) tensors.
Numbers are medians of 7 repeats of one pass over a shuffled epoch of train windows.
"""

from __future__ import annotations

import platform
import statistics
import time
from datetime import date

import numpy as np
import torch

from bench.report import markdown_table, write_section
from timedistill.tasks.windows import WindowBatcher, batch_ranges, split_rows, window_starts

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "windows": """\
The strided view builds batches several times faster than either per-window loop; the gain shrinks with more
variables, as each window's data grows against the loop's per-window cost.""",
}

BATCH = 32


class NaiveDataset(torch.utils.data.Dataset):
    def __init__(self, series: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> None:
        self.series, self.starts, self.lookback, self.horizon = series, starts, lookback, horizon

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.starts[i]
        return (torch.from_numpy(self.series[s : s + self.lookback]),
                torch.from_numpy(self.series[s + self.lookback : s + self.lookback + self.horizon]))


def epoch_batcher(series, starts, lookback, horizon, order):
    batcher = WindowBatcher(series, lookback, horizon)
    for batch in batch_ranges(len(order), BATCH):
        batcher(starts[order[batch]])


def epoch_stack(series, starts, lookback, horizon, order):
    for batch in batch_ranges(len(order), BATCH):
        chosen = starts[order[batch]]
        torch.from_numpy(np.stack([series[s : s + lookback] for s in chosen]))
        torch.from_numpy(np.stack([series[s + lookback : s + lookback + horizon] for s in chosen]))


def epoch_dataloader(series, starts, lookback, horizon, order):
    dataset = NaiveDataset(series, starts[order], lookback, horizon)
    for _ in torch.utils.data.DataLoader(dataset, batch_size=BATCH):
        pass


def measure(fn, *args, repeats: int = 7) -> float:
    fn(*args)  # warm up
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for name, n_rows, n_vars in (("ETTh1-shaped", 17420, 7), ("Weather-shaped", 52696, 21)):
        series = np.random.default_rng(0).standard_normal((n_rows, n_vars)).astype(np.float32)
        starts = window_starts(split_rows("ratio", n_rows)["train"], 720, 96)
        order = np.random.default_rng(1).permutation(len(starts))
        # correctness first: the methods build the same batch
        x, _ = WindowBatcher(series, 720, 96)(starts[order[:BATCH]])
        assert torch.equal(x, torch.from_numpy(np.stack([series[s : s + 720] for s in starts[order[:BATCH]]])))
        ours = measure(epoch_batcher, series, starts, 720, 96, order)
        for label, fn in (("naive loop (Dataset + collate)", epoch_dataloader),
                          ("naive loop (np.stack)", epoch_stack)):
            seconds = measure(fn, series, starts, 720, 96, order)
            rows.append([name, label, f"{len(starts) / seconds:,.0f}", f"{seconds:.3f}", "1.0x"])
        rows.append([name, "WindowBatcher (strided view)", f"{len(starts) / ours:,.0f}", f"{ours:.3f}", ""])
        baseline = float(rows[-3][3])
        for row in rows[-3:]:
            row[4] = f"{baseline / float(row[3]):.1f}x"
    table = markdown_table(["data (L=720, S=96, batch 32)", "method", "windows/s", "s / epoch", "speed-up"], rows)
    text = (f"## Batch building\n\nCommand: `python -m bench.bench_windows` ({date.today()}, "
            f"{platform.machine()}, 1 thread, numpy {np.__version__}, torch {torch.__version__}). "
            "Median of 7 passes over one shuffled epoch of train windows; speed-up against the "
            "Dataset + collate loop.\n\n" + table)
    print(text)
    write_section("windows", text, READING["windows"])


if __name__ == "__main__":
    main()
