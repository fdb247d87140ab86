"""ModernTCN's large-kernel depthwise convolution: oneDNN's direct conv against the FFT route it now uses.

Reproduce (about 3 minutes on a 2-core machine):

    python -m bench.bench_depthwise

For each preset's ModernTCN (L=720, S=96, batch 32 of random windows, 2 threads) it times a training step
(forward, backward, Adam) and an inference call after `structural_reparam`, once with
`LargeKernelConv` calling its Conv1d modules directly (the code before the FFT route) and once as shipped,
alternating the two so that a change in the machine's load hits both; medians of the timed pairs after
one warm-up pair. The table goes to the "depthwise" section of BENCHMARKS.md.

Hidden costs: the FFT route pads each series to a power of two >= N + K - 1 (256 for 180 patches and a
51-step kernel) and keeps one complex spectrum of the block's input per call in memory for backward.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from bench.report import markdown_table, write_section
from timedistill.models import build_model
from timedistill.models.moderntcn import LargeKernelConv

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "depthwise": """\
The FFT route is faster in every row, most at inference on the smallest preset; its gain shrinks on the larger
presets.""",
}

LOOKBACK, HORIZON, BATCH, THREADS = 720, 96, 32, 2
PRESETS = [("etth1", 7), ("ettm1", 7), ("weather", 21)]
TIMED_PAIRS = 5


def _direct_forward(self: LargeKernelConv, x: Tensor) -> Tensor:
    if self.merged is not None:
        return self.merged(x)
    return self.large(x) + self.small(x)


@contextlib.contextmanager
def route(name: str) -> Iterator[None]:
    """Run LargeKernelConv through the direct Conv1d modules ("direct") or as shipped ("fft")."""
    shipped = LargeKernelConv.forward
    if name == "direct":
        LargeKernelConv.forward = _direct_forward
    try:
        yield
    finally:
        LargeKernelConv.forward = shipped


def alternate(call: Callable[[], object]) -> dict[str, float]:
    """Median seconds of `call` per route, the routes alternating, after one warm-up pair."""
    times: dict[str, list[float]] = {"direct": [], "fft": []}
    for pair in range(TIMED_PAIRS + 1):
        for name in times:
            with route(name):
                start = time.perf_counter()
                call()
                elapsed = time.perf_counter() - start
            if pair:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    optimizer.zero_grad()
    (model(x).prediction - y).square().mean().backward()
    optimizer.step()


def predict(model: torch.nn.Module, x: Tensor) -> None:
    with torch.inference_mode():
        model(x)


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    rows = []
    for preset, n_vars in PRESETS:
        model = build_model("moderntcn", lookback=LOOKBACK, horizon=HORIZON, n_vars=n_vars, preset=preset)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        x, y = torch.randn(BATCH, LOOKBACK, n_vars), torch.randn(BATCH, HORIZON, n_vars)
        params = model.num_params()  # as trained: before structural_reparam folds the small kernels
        step = alternate(functools.partial(train_step, model, optimizer, x, y))
        model.eval().structural_reparam()
        infer = alternate(functools.partial(predict, model, x))
        rows.append(
            [
                f"{preset} (C={n_vars})",
                f"{params:,}",
                f"{step['direct'] * 1e3:,.0f}",
                f"{step['fft'] * 1e3:,.0f}",
                f"{step['direct'] / step['fft']:.2f}x",
                f"{infer['direct'] * 1e3:,.1f}",
                f"{infer['fft'] * 1e3:,.1f}",
                f"{infer['direct'] / infer['fft']:.2f}x",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)

    load_end = os.getloadavg()[0]
    header = [
        "preset",
        "parameters",
        "train step ms, direct",
        "train step ms, FFT",
        "speed-up",
        "inference ms, direct",
        "inference ms, FFT",
        "speed-up",
    ]
    machine = platform.processor() or platform.machine()
    markdown = "\n".join(
        [
            "## ModernTCN: direct vs FFT depthwise convolution",
            "",
            f"Command: `python -m bench.bench_depthwise` ({datetime.date.today().isoformat()}, {machine}, "
            f"{os.cpu_count()} cores, {THREADS} threads, torch {torch.__version__}; 1-minute load average "
            f"{load_start:.1f} at the start, {load_end:.1f} at the end). L={LOOKBACK}, S={HORIZON}, batch "
            f"{BATCH}; median of {TIMED_PAIRS} alternating pairs after one warm-up pair. Training step = "
            "forward, backward and Adam; inference after `structural_reparam`, under torch.inference_mode.",
            "",
            markdown_table(header, rows),
        ]
    )
    write_section("depthwise", markdown, READING["depthwise"])
    print(markdown)


if __name__ == "__main__":
    main()
