"""Training benchmarks on ETTh1 (lookback 720, horizon 96) through the real Ray Train steps:

1. distillation epoch time with the Parquet teacher cache vs the teacher run online, per teacher;
2. teacher-training throughput with 1 worker (all CPUs) vs 2 data-parallel workers;
3. peak resident memory of every worker;
4. with --short-run instead: a short run (teacher iTransformer 3 epochs, student up to 8 epochs,
   the plain MLP trained beside it) and its test MSEs.

    python -m bench.bench_training [--teachers itransformer moderntcn] [--epochs 2] [--data-dir DIR]
    python -m bench.bench_training --short-run

ETTh1.csv comes from --data-dir (default data/, where it ships).

Epoch times are medians over the epochs of one run (each epoch trains the distilled student only:
the baseline is switched off so that the comparison isolates the teacher's cost). Artifacts go to
bench/.artifacts/training and are rebuilt on every run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from bench.report import markdown_table, write_section
from timedistill.conf import load_config
from timedistill.tasks.evaluate import compare
from timedistill.tasks.runtime import ray_session
from timedistill.tasks.steps import RunContext, cache_step, distill_step, ingest_step, teacher_step
from timedistill.tasks.windows import window_counts

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "short-run": """\
A budget of minutes gives the full protocol's ordering ("Reproducing the paper"): the distilled student
below both its teacher and the plain MLP.""",
    "training": """\
The Parquet cache makes a distillation epoch faster than running the teacher online, after a one-off build.
Two data-parallel workers of one CPU train the teacher faster than one worker with every CPU (intra-op threads
of these small matmuls scale worse). Epoch medians come from two epochs: expect seconds of noise.""",
}

ROOT = Path(__file__).resolve().parent / ".artifacts" / "training"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # ships ETTh1.csv


def settings(data: Path, root: Path, *extra: str):
    return load_config(
        "etth1",
        [
            f"data.path={data}",
            "data.horizons=[96]",
            f"storage.root={root}",
            "teacher.epochs=1",
            "distill.baseline=false",
            "distill.patience=100",
            *extra,
        ],
    )


def distill_epochs(data: Path, teacher_name: str, epochs: int) -> list[list[object]]:
    rows = []
    root = ROOT / "distill"
    for built in ("runs", "ray", "cache"):  # the teacher is kept: its training is not what is timed here
        shutil.rmtree(root / built, ignore_errors=True)
    times = {}
    for use_cache in (True, False):
        config = settings(
            data,
            root,
            f"teacher.name={teacher_name}",
            f"distill.epochs={epochs}",
            f"distill.use_cache={str(use_cache).lower()}",
            f"ray.cpus_per_worker={os.cpu_count()}",
        )
        with RunContext(config) as run:
            dataset = ingest_step(run)
            teachers = teacher_step(run, dataset, 96)
            began = time.perf_counter()
            caches = cache_step(run, dataset, teachers)
            cache_seconds = time.perf_counter() - began
            students = distill_step(run, dataset, teachers, caches)
        teacher, cache = teachers.chosen, caches.caches[0] if caches else None
        history = students.student.history
        times[use_cache] = statistics.median(h.seconds for h in history)
        rows.append(
            [
                teacher_name,
                f"{teacher.params:,}",
                "Parquet cache" if use_cache else "teacher online",
                f"{times[use_cache]:.1f}",
                students.teacher_forward_batches,
                f"{cache_seconds:.1f} (once)" if use_cache and not cache.cached else ("reused" if use_cache else "-"),
                f"{max(students.peak_memory_mb):,.0f}",
            ]
        )
    rows[-1].append(f"{times[False] / times[True]:.2f}x slower")
    rows[0].append("")
    return rows


def worker_throughput(data: Path) -> list[list[object]]:
    rows = []
    base = None
    for workers in (1, 2):
        root = ROOT / f"workers-{workers}"
        shutil.rmtree(root, ignore_errors=True)
        config = settings(
            data,
            root,
            "teacher.name=itransformer",
            "teacher.epochs=2",
            f"ray.num_workers={workers}",
            f"ray.cpus_per_worker={(os.cpu_count() or 2) / workers}",
        )
        with RunContext(config) as run:
            dataset = ingest_step(run)
            teacher = teacher_step(run, dataset, 96).chosen
        seconds = statistics.median(h.seconds for h in teacher.history)
        windows = window_counts(dataset.splits, 720, 96)["train"]
        rate = windows / seconds
        base = base or rate
        rows.append(
            [
                workers,
                f"{config.ray.cpus_per_worker:g}",
                f"{seconds:.1f}",
                f"{rate:,.0f}",
                f"{rate / base:.2f}x",
                ", ".join(f"{m:,.0f}" for m in teacher.peak_memory_mb),
            ]
        )
    return rows


def short_run(data: Path) -> str:
    """Teacher iTransformer 3 epochs, student and plain MLP up to 8 epochs, all test windows."""
    root = ROOT / "short"
    shutil.rmtree(root, ignore_errors=True)
    config = settings(
        data,
        root,
        "teacher.name=itransformer",
        "teacher.epochs=3",
        "distill.epochs=8",
        "distill.baseline=true",
        "distill.patience=5",
        f"ray.cpus_per_worker={os.cpu_count()}",
    )
    began = time.perf_counter()
    with ray_session(config), RunContext(config) as run:
        dataset = ingest_step(run)
        teachers = teacher_step(run, dataset, 96)
        students = distill_step(run, dataset, teachers, cache_step(run, dataset, teachers))
    teacher = teachers.chosen
    seconds = time.perf_counter() - began
    row = compare(teacher, students)
    rows = [[role, f"{score.test_mse:.4f}", f"{score.test_mae:.4f}", score.epochs]
            for role, score in row.scores().items()]
    gain = row.student_vs_baseline_pct
    return "\n".join(
        [
            "## Short run (ETTh1, lookback 720, horizon 96)",
            "",
            f"Command: `python -m bench.bench_training --short-run` ({date.today()}, {machine()}, "
            f"{seconds:.0f} s in all). Teacher iTransformer 3 epochs; the distilled MLP student and the plain MLP "
            "(`baseline`, ground truth only) up to 8 epochs with early stopping; every test window.",
            "",
            markdown_table(["model", "test MSE", "test MAE", "epochs run"], rows),
            "",
            f"The distilled student's test MSE is {gain:.1f}% lower than the plain MLP's.",
        ]
    )


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", nargs="*", default=["itransformer"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--short-run", action="store_true", help="only the short run (section short-run)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR,
                        help="the folder holding ETTh1.csv (default: data/, which ships it)")
    args = parser.parse_args()
    data = args.data_dir / "ETTh1.csv"
    if not data.is_file():
        sys.exit(f"bench.bench_training: {data} not found: pass the folder holding ETTh1.csv as --data-dir")
    if args.short_run:
        text = short_run(data)
        print(text)
        write_section("short-run", text, READING["short-run"])
        return
    with ray_session(settings(data, ROOT)):
        distill = [row for name in args.teachers for row in distill_epochs(data, name, args.epochs)]
        workers = worker_throughput(data)
    text = "\n".join(
        [
            "## Training (Ray Train, ETTh1, lookback 720, horizon 96)",
            "",
            f"Command: `python -m bench.bench_training --teachers {' '.join(args.teachers)} --epochs {args.epochs}` "
            f"({date.today()}, {machine()}). Medians over the epochs of one run; the distilled student only (no "
            "baseline) so that the rows differ by the teacher's cost alone.",
            "",
            markdown_table(
                [
                    "teacher",
                    "teacher params",
                    "teacher outputs from",
                    "s / epoch",
                    "teacher batches run",
                    "cache build s",
                    "peak MiB / worker",
                    "online vs cache",
                ],
                distill,
            ),
            "",
            "Teacher training (iTransformer) with 1 worker holding every CPU vs 2 data-parallel workers (DDP, gloo):",
            "",
            markdown_table(
                ["workers", "CPUs / worker", "s / epoch", "train windows / s", "vs 1 worker", "peak MiB per worker"],
                workers,
            ),
        ]
    )
    print(text)
    write_section("training", text, READING["training"])


if __name__ == "__main__":
    main()
