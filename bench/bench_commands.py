"""Light commands stay light: each one's wall time as a user runs it (a fresh process; the median
of the rounds) on the smoke model and on an ETTh1-sized one (lookback 720, horizon 96), beside the
CLI's start (`timedistill --help`) and the imports `predict` needs before any work; and backtests
of 1k, 10k and 100k origins in the command's process and on Ray Data (`predict --engine process |
ray`), side by side, which set where `predict` moves to Ray Data (tasks/predict.py,
IN_PROCESS_ORIGINS).

    python -m bench.bench_commands [--rounds 3] [--no-write]

The two models are trained once, into bench/.artifacts/commands, by the retrain flow on the
shipped sample: the smoke config as it is, and etth1 at one horizon with a DLinear teacher and one
epoch each, registered whatever it scores (what the commands cost does not depend on how well the
model forecasts). The backtests read a synthetic hourly series of ETTh1's columns, long enough for 100k origins.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from bench.report import markdown_table, write_section

ROOT = Path(__file__).resolve().parent / ".artifacts" / "commands"
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "ETTh1.csv"
CLI = [sys.executable, "-m", "timedistill.flows.cli"]
MODELS = {  # name -> (config, overrides) of its retrain
    "smoke-24": ("smoke", []),
    "etth1-96": ("etth1", ["data.horizons=[96]", "teacher.name=dlinear", "teacher.epochs=1", "distill.epochs=1",
                           "distill.baseline=false", "registry.gate=always"]),
}
ORIGINS = (1_000, 10_000, 100_000)
STORAGE = ["--set", f"storage.root={ROOT}"]  # the bench's models, for a command that takes a config
VARIABLES = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
START = datetime(2020, 1, 1)

READING = {
    "commands": """\
No light command starts Ray or a Prefect server: each pays its imports and its work, and a smoke backtest of every
origin ends within 3 s of `predict`'s imports, the goal. In process a backtest beat a Ray Data pool at every size
here (the pool's start outlasts the arithmetic); `predict` moves to Ray Data past the largest size, or on a cluster.""",
}


def run(args: list[str]) -> float:
    """One command in a fresh process: its wall time (it must succeed)."""
    began = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "80"})
    seconds = time.perf_counter() - began
    if done.returncode not in (0, 3):  # monitor: 3 when a model drifted
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def median_of(args: list[str], rounds: int) -> float:
    return statistics.median(run(args) for _ in range(rounds))


def train_models() -> None:
    for model, (config, overrides) in MODELS.items():
        if (ROOT / "registry" / model / "LATEST").exists():
            continue
        print(f"training {model} ...", flush=True)
        run([*CLI, "retrain", config, *STORAGE, *[arg for item in overrides for arg in ("--set", item)]])


def synthetic_series(rows: int) -> Path:
    """An hourly random walk of ETTh1's columns (values near ETTh1's scale)."""
    path = ROOT / f"synthetic-{rows}.csv"
    if not path.exists():
        walk = 10 + np.cumsum(np.random.default_rng(0).normal(0, 0.3, (rows, len(VARIABLES))), axis=0)
        frame = pl.DataFrame({"date": pl.datetime_range(START, START + timedelta(hours=rows - 1), "1h", eager=True),
                              **{name: walk[:, k] for k, name in enumerate(VARIABLES)}})
        frame.write_csv(path)
    return path


def origins_range(lookback: int, origins: int) -> str:
    """--origins FROM:TO that holds exactly `origins` origins of the synthetic series."""
    first = START + timedelta(hours=lookback - 1)
    return f"{first:%Y-%m-%d %H:%M:%S}:{first + timedelta(hours=origins - 1):%Y-%m-%d %H:%M:%S}"


def light_commands(rounds: int) -> list[list[object]]:
    out = ROOT / "out"
    imports = [sys.executable, "-c", "import timedistill.flows.cli, timedistill.tasks.predict"]
    rows = [["`timedistill --help` (the CLI's start)", f"{median_of([*CLI, '--help'], rounds):.1f}", ""],
            ["`predict`'s imports, no work", f"{median_of(imports, rounds):.1f}", ""]]
    commands = {
        "`models list`": lambda model, config: [*CLI, "models", "list", "--storage", str(ROOT)],
        "`models show`": lambda model, config: [*CLI, "models", "show", model, "--storage", str(ROOT)],
        "`predict` (the last window)": lambda model, config: [
            *CLI, "predict", config, *STORAGE, "--model", model, "--data", str(SHIPPED), "--output",
            str(out / "last.parquet")],
        "`predict --origins all` (every origin of ETTh1)": lambda model, config: [
            *CLI, "predict", config, *STORAGE, "--model", model, "--data", str(SHIPPED), "--origins", "all",
            "--output", str(out / "all.parquet")],
        "`monitor`": lambda model, config: [*CLI, "monitor", config, *STORAGE, *(
            ["--set", "data.horizons=[96]"] if config == "etth1" else [])],
        "`export --format onnx`": lambda model, config: [*CLI, "export", model, "--format", "onnx", "--output",
                                                          str(out), "--storage", str(ROOT)],
        "`export --format torchscript`": lambda model, config: [*CLI, "export", model, "--format", "torchscript",
                                                                 "--output", str(out), "--storage", str(ROOT)],
    }
    for label, command in commands.items():
        seconds = [median_of(command(model, config), rounds) for model, (config, _) in MODELS.items()]
        rows.append([label, *[f"{value:.1f}" for value in seconds]])
        print(rows[-1], flush=True)
    return rows


def backtests(rounds: int) -> list[list[object]]:
    source = synthetic_series(max(ORIGINS) + 720)
    rows = []
    for origins in ORIGINS:
        row: list[object] = [f"{origins:,}"]
        for model, (config, _) in MODELS.items():
            lookback = 96 if model == "smoke-24" else 720
            for engine in ("process", "ray"):
                args = [*CLI, "predict", config, *STORAGE, "--model", model, "--data", str(source), "--origins",
                        origins_range(lookback, origins), "--engine", engine, "--output",
                        str(ROOT / "out" / "backtest.parquet")]
                row.append(f"{median_of(args, rounds):.1f}")
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backtest-rounds", type=int, default=1, help="the backtests take long: fewer rounds")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    ROOT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(ROOT / "out", ignore_errors=True)
    train_models()
    light = light_commands(args.rounds)
    backtest = backtests(args.backtest_rounds)
    text = "\n".join([
        "## Light commands: no cluster for work that needs none",
        "",
        f"Command: `python -m bench.bench_commands --rounds {args.rounds} --backtest-rounds {args.backtest_rounds}` "
        f"({date.today()}, {platform.machine()}, {os.cpu_count()} cores). Wall seconds of each command in a fresh "
        "process (the median of the rounds), on the smoke model (lookback 96, horizon 24) and an ETTh1-sized one "
        "(lookback 720, horizon 96; both MLP students of 7 variables).",
        "",
        markdown_table(["command", "smoke-24", "etth1-96"], light),
        "",
        "Backtests of a synthetic hourly series (ETTh1's columns), `predict --origins FROM:TO --engine ...`, wall "
        "seconds:",
        "",
        markdown_table(["origins", "smoke-24 in process", "smoke-24 on Ray Data", "etth1-96 in process",
                        "etth1-96 on Ray Data"], backtest),
    ])
    print(text)
    if not args.no_write:
        write_section("commands", text, READING["commands"])


if __name__ == "__main__":
    sys.exit(main())
