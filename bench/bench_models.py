"""Parameters and CPU inference latency of every registered model.

Reproduce (about 5-10 minutes on a 2-core machine):

    python -m bench.bench_models

Every model is built at lookback L=720, horizon S=96, for an ETTh1-shaped input (C=7, preset "etth1") and
an Electricity-shaped one (C=321, preset "electricity"), and timed in eval mode under
torch.inference_mode on a batch of 32 standardized random windows with 2 threads: a few warm-up calls,
then the median of N timed calls; slow models (over 5 s a call) get one warm-up call and N shrinks to fit
about 20 s of timing per row (at least one call), so the whole run stays near 10 minutes.
The table goes to the "models" section of BENCHMARKS.md.

Hidden costs: the first call of each model allocates its workspaces (that is what the warm-up absorbs);
on a shared machine other processes slow the rows down (two-thread runs suffer most), so the load average
at the start and the end is printed next to the numbers, and the fastest call is reported beside the
median as the better estimate of the uncontended speed.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time

import torch

from bench.report import markdown_table, write_section
from timedistill.models import MODELS, STUDENTS, build_model

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "models": """\
At 7 variables iTransformer and DLinear cost about what the students cost; at 321 variables PatchTST, ModernTCN
and TimeMixer are one to two orders of magnitude slower than the MLP student. On a shared machine the fastest
call is the better estimate of the uncontended speed.""",
}

LOOKBACK, HORIZON, BATCH, THREADS = 720, 96, 32, 2
SHAPES = [("ETTh1", 7, "etth1"), ("Electricity", 321, "electricity")]
WARMUP = 2  # warm-up calls (1 when a single call takes longer than SLOW_CALL_S)
SLOW_CALL_S = 5.0
MAX_RUNS = 10
SECONDS_PER_CASE = 20.0  # timed budget per (model, shape); at least one timed call


def time_model(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float, int]:
    """Median and fastest seconds per forward call, and the number of timed calls."""
    with torch.inference_mode():
        start = time.perf_counter()
        model(x)  # first call: allocations and kernel selection
        per_call = time.perf_counter() - start
        if per_call < SLOW_CALL_S:
            for _ in range(WARMUP - 1):
                model(x)
        runs = max(1, min(MAX_RUNS, int(SECONDS_PER_CASE / per_call)))
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), runs


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    rows = []
    for data, n_vars, preset in SHAPES:
        x = torch.randn(BATCH, LOOKBACK, n_vars)
        for name in MODELS:
            model = build_model(name, lookback=LOOKBACK, horizon=HORIZON, n_vars=n_vars, preset=preset).eval()
            median, fastest, runs = time_model(model, x)
            role = "student" if name in STUDENTS else "teacher"
            rows.append(
                [
                    name,
                    role,
                    f"{data} (C={n_vars})",
                    f"{model.num_params():,}",
                    f"{model.feature_dim:,}",
                    f"{median * 1e3:,.1f}",
                    f"{fastest * 1e3:,.1f}",
                    runs,
                ]
            )
            print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
            del model

    load_end = os.getloadavg()[0]
    header = ["model", "role", "data", "parameters", "feature dim", "ms / batch (median)", "fastest", "runs"]
    today = datetime.date.today().isoformat()
    machine = platform.processor() or platform.machine()
    markdown = "\n".join(
        [
            "## Models: parameters and CPU inference latency",
            "",
            f"Command: `python -m bench.bench_models` ({today}, {machine}, {os.cpu_count()} cores, "
            f"{THREADS} threads, torch {torch.__version__}; 1-minute load average {load_start:.1f} at the start, "
            f"{load_end:.1f} at the end). "
            f"L={LOOKBACK}, S={HORIZON}, batch {BATCH}, eval mode under torch.inference_mode; each model "
            f"with the data set's preset; median of the timed runs after {WARMUP} warm-up calls "
            f"(1 when a call takes over {SLOW_CALL_S:.0f} s).",
            "",
            markdown_table(header, rows),
        ]
    )
    write_section("models", markdown, READING["models"])
    print(markdown)


if __name__ == "__main__":
    main()
