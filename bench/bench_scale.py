"""How cost grows with the series, through the real steps at lookback 720 and
horizon 96: one teacher epoch, the teacher cache, one distillation epoch, on synthetic series
(daily and weekly seasons plus noise: not Electricity or Traffic, which are not shipped) of 7, 21,
321 and 862 variables, and 1x, 2x and 4x the windows at 321.

    python -m bench.bench_scale                                   # the table (hours on 2 cores)
    python -m bench.bench_scale --vars 7 21 --windows 300 --multiples 1 --no-write   # a quick look

Per row: the cache's size and build rate, the teacher's and the distillation's seconds per epoch,
and each worker's peak memory (and what the run added to it: peak minus the worker's memory
before setup). The distillation streams the cache within --budget-mb (distill.memory_budget_mb),
set below the larger caches so that they stream. Then the growth fitted against windows x
variables (the exponent of a power law: 1 is linear, 0 flat) and, from the fit, the CPU seconds
per epoch of a full Electricity-sized (321 variables, 17,597 train windows) and Traffic-sized
(862 variables, 11,465) run. Artifacts go to bench/.artifacts/scale and are rebuilt every run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import torch

from bench.report import markdown_table, write_section
from timedistill.conf import load_config
from timedistill.tasks.runtime import ray_session
from timedistill.tasks.steps import RunContext, cache_step, distill_step, ingest_step, teacher_step

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "scale": """\
Time and cache size grow about linearly with windows x variables, so the projections are a fair first guess.
The distillation's memory does not follow the cache, which streams; it grows with the variables, since every
window of a batch carries all of them.""",
}

ROOT = Path(__file__).resolve().parent / ".artifacts" / "scale"
LOOKBACK, HORIZON, TRAIN_SHARE = 720, 96, 0.7
FULL_SIZE = {"Electricity": (321, 17_597), "Traffic": (862, 11_465)}  # variables, train windows


@dataclass(frozen=True)
class Measured:
    variables: int
    train_windows: int
    cache_mib: float
    cache_windows_per_s: float
    teacher_s_per_epoch: float
    distill_s_per_epoch: float
    peak_mib: float  # the largest worker's, distillation
    added_mib: float  # what the distillation added to that worker

    @property
    def size(self) -> int:
        return self.variables * self.train_windows


def synthetic_series(path: Path, variables: int, train_windows: int, seed: int = 0) -> None:
    """Hourly rows with a daily and a weekly season of random phase and amplitude per variable,
    a slow trend and noise; enough rows that the 70% train split holds `train_windows`."""
    rows = int(np.ceil((train_windows + LOOKBACK + HORIZON - 1) / TRAIN_SHARE)) + 1
    rng = np.random.default_rng(seed)
    hours = np.arange(rows)[:, None]
    daily = rng.uniform(0.5, 2, variables) * np.sin(2 * np.pi * hours / 24 + rng.uniform(0, 2 * np.pi, variables))
    weekly = rng.uniform(0.2, 1, variables) * np.sin(2 * np.pi * hours / 168 + rng.uniform(0, 2 * np.pi, variables))
    trend = rng.normal(0, 1e-4, variables) * hours
    values = (daily + weekly + trend + rng.normal(0, 0.3, (rows, variables))).astype(np.float32)
    start = np.datetime64("2020-01-01T00:00", "ms")
    frame = pl.DataFrame({"date": start + np.arange(rows).astype("timedelta64[h]").astype("timedelta64[ms]"),
                          **{f"v{k}": values[:, k] for k in range(variables - 1)}, "OT": values[:, -1]})
    frame.write_parquet(path)


def measure(variables: int, train_windows: int, budget_mb: float) -> Measured:
    name = f"synthetic-{variables}x{train_windows}"
    root = ROOT / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    synthetic_series(root / "series.parquet", variables, train_windows)
    config = load_config("etth1", [
        f"data.path={root / 'series.parquet'}", f"data.name={name}", "data.split=ratio", f"data.horizons=[{HORIZON}]",
        f"storage.root={root / 'artifacts'}", "teacher.name=itransformer", "teacher.epochs=1", "distill.epochs=1",
        "distill.baseline=false", f"distill.memory_budget_mb={budget_mb}"])
    with RunContext(config) as run:
        dataset = ingest_step(run)
        teachers = teacher_step(run, dataset, HORIZON)
        began = time.perf_counter()
        caches = cache_step(run, dataset, teachers)
        cache_seconds = time.perf_counter() - began
        students = distill_step(run, dataset, teachers, caches)
    teacher, cache = teachers.chosen, caches.caches[0]
    growth = [peak - start for peak, start in zip(students.peak_memory_mb, students.start_memory_mb or [], strict=True)]
    return Measured(variables=variables, train_windows=cache.rows["train"], cache_mib=cache.bytes / 2**20,
                    cache_windows_per_s=sum(cache.rows.values()) / cache_seconds,
                    teacher_s_per_epoch=teacher.history[0].seconds,
                    distill_s_per_epoch=students.student.history[0].seconds,
                    peak_mib=max(students.peak_memory_mb), added_mib=max(growth))


def exponent(sizes: list[int], values: list[float]) -> float:
    """b of values ~ a * sizes^b, by least squares in log-log (nan with fewer than two sizes)."""
    if len(set(sizes)) < 2:
        return float("nan")
    return float(np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-9)), 1)[0])


def projected(rows: list[Measured], field: str, size: int) -> float:
    """A field at `size` windows x variables, from the power law fitted to every row."""
    sizes, values = [r.size for r in rows], [getattr(r, field) for r in rows]
    slope, intercept = np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-9)), 1)
    return float(np.exp(intercept) * size**slope)


def report(rows: list[Measured], command: str, budget_mb: float) -> str:
    table = [[r.variables, f"{r.train_windows:,}", f"{r.size:,}", f"{r.cache_mib:,.0f}",
              f"{r.cache_windows_per_s:,.0f}", f"{r.teacher_s_per_epoch:.1f}", f"{r.distill_s_per_epoch:.1f}",
              f"{r.peak_mib:,.0f}", f"{r.added_mib:,.0f}"] for r in rows]
    sizes = [r.size for r in rows]
    growth = [["teacher s/epoch", f"{exponent(sizes, [r.teacher_s_per_epoch for r in rows]):.2f}"],
              ["distill s/epoch", f"{exponent(sizes, [r.distill_s_per_epoch for r in rows]):.2f}"],
              ["cache MiB", f"{exponent(sizes, [r.cache_mib for r in rows]):.2f}"],
              ["memory added by distillation", f"{exponent(sizes, [r.added_mib for r in rows]):.2f}"]]
    text = [
        "## Scale: how cost grows (synthetic series, lookback 720, horizon 96)",
        "",
        f"Command: `{command}` ({date.today()}, {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, CPU). One teacher epoch (iTransformer), its cache, one distillation epoch "
        f"(the student alone) within distill.memory_budget_mb={budget_mb:g}. Synthetic series: daily and weekly "
        "seasons, trend and noise. Peak: the distillation worker's resident memory; added: peak minus its memory "
        "before setup.",
        "",
        markdown_table(["variables", "train windows", "windows x variables", "cache MiB", "cache windows/s",
                        "teacher s/epoch", "distill s/epoch", "peak MiB/worker", "added MiB"], table),
        "",
        "Growth against windows x variables (exponent b of a * size^b; 1: linear, 0: flat):",
        "",
        markdown_table(["quantity", "exponent"], growth),
    ]
    if len(set(sizes)) >= 2:
        projection = [[name, variables, f"{windows:,}",
                       f"{projected(rows, 'teacher_s_per_epoch', variables * windows) / 60:,.0f}",
                       f"{projected(rows, 'distill_s_per_epoch', variables * windows) / 60:,.0f}"]
                      for name, (variables, windows) in FULL_SIZE.items()]
        text += ["", "Projected from the fit, one epoch on the CPU measured above (minutes):", "",
                 markdown_table(["run", "variables", "train windows", "teacher min/epoch", "distill min/epoch"],
                                projection)]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vars", type=int, nargs="+", default=[7, 21, 321, 862])
    parser.add_argument("--windows", type=int, default=2000, help="train windows of every row at 1x")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4], help="of --windows, at 321 variables")
    parser.add_argument("--budget-mb", type=float, default=256)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    sizes = [(variables, args.windows) for variables in args.vars]
    sizes += [(321, args.windows * m) for m in args.multiples if (321, args.windows * m) not in sizes and m != 1]
    rows = []
    with ray_session(load_config("etth1", [f"storage.root={ROOT}"])):
        for variables, windows in sizes:
            rows.append(measure(variables, windows, args.budget_mb))
            print(rows[-1], flush=True)
    command = "python -m bench.bench_scale " + " ".join(
        [f"--vars {' '.join(map(str, args.vars))}", f"--windows {args.windows}",
         f"--multiples {' '.join(map(str, args.multiples))}", f"--budget-mb {args.budget_mb:g}"])
    text = report(rows, command, args.budget_mb)
    print(text)
    if not args.no_write:
        write_section("scale", text, READING["scale"])


if __name__ == "__main__":
    main()
