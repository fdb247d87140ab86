"""A recurring retrain after new rows: cold (teacher and students from scratch) against warm
(`teacher.refresh: warm`, `distill.warm_start: true`), on ETTh1 at horizon 96.

    python -m bench.bench_recurring [--new-rows 870] [--set dotted.key=value ...]

Day 1 retrains on all but the last --new-rows rows of ETTh1 (about 5%) and registers the student.
Day 2 appends those rows and retrains on the same grown file twice, each in its own copy of day
1's storage: cold (the defaults), and warm (fine-tuning day 1's teacher for teacher.warm_epochs
and day 1's student and baseline for distill.warm_epochs). The split is rolling (validation and
test are the newest 30 days each), so both day-2 runs are scored on the same, newest windows, and
the champion/challenger gate scores each day-2 student against day 1's on the same validation
windows. Each retrain is `timedistill retrain ... --json` in a new process, as a scheduled run
would be. Artifacts go to bench/.artifacts/recurring and are rebuilt on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from bench.report import markdown_table, write_section

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "recurring": """\
The warm retrain takes well under half the cold one's time, most of it saved in the distill step; its test MSEs
are a few percent worse, less than one run of the plain MLP moves by. Both day-2 students lost to day 1's on
the new validation windows, so the gate kept the champion serving.""",
}

PROJECT = Path(__file__).resolve().parent.parent
ROOT = PROJECT / "bench" / ".artifacts" / "recurring"
ETTH1 = PROJECT / "data" / "ETTh1.csv"
ROLLING = ["data.split=rolling", "data.val_size=30d", "data.test_size=30d", "data.horizons=[96]"]
WARM = ["teacher.refresh=warm", "distill.warm_start=true"]


def retrain(csv: Path, root: Path, overrides: list[str]) -> tuple[float, dict]:
    sets = [f"data.path={csv}", f"storage.root={root}", *ROLLING, *overrides]
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "timedistill.flows.cli", "retrain", "etth1", "--json",
                           *[arg for item in sets for arg in ("--set", item)]],
                          cwd=PROJECT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"retrain failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def row(label: str, seconds: float, summary: dict) -> list[object]:
    (result,) = summary["results"]
    (teacher,) = summary["teachers"]
    (model,) = summary["models"]
    decision = model["decision"]
    steps = summary["steps"]
    verdict = (f"{decision['challenger_mse']:.4f} vs {decision['champion_mse']:.4f}: "
               f"{'registered ' + model['version'] if model['registered'] else 'refused'}") if decision else "-"
    return [label, f"{seconds:.0f}", f"{steps['teacher']['seconds']:.0f}", f"{steps['distill']['seconds']:.0f}",
            teacher["epochs"], f"{result['teacher']['test_mse']:.4f}", f"{result['student']['test_mse']:.4f}",
            f"{result['baseline']['test_mse']:.4f}", verdict]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-rows", type=int, default=870, help="rows appended on day 2 (870: 5%% of ETTh1)")
    parser.add_argument("--set", action="append", default=[], help="an override for every retrain")
    args = parser.parse_args(argv)
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    lines = ETTH1.read_text().splitlines()
    day1, day2 = ROOT / "day1.csv", ROOT / "day2.csv"
    day1.write_text("\n".join(lines[: len(lines) - args.new_rows]) + "\n")
    day2.write_text("\n".join(lines) + "\n")
    load = os.getloadavg()[0]

    seconds, summary = retrain(day1, ROOT / "day1", ["registry.gate=always", *args.set])
    rows = [row("day 1 (first version)", seconds, summary)]
    for label, extra in (("day 2 cold", []), ("day 2 warm", WARM)):
        root = ROOT / label.replace(" ", "-")
        shutil.copytree(ROOT / "day1", root)
        seconds, summary = retrain(day2, root, ["registry.gate=beats-champion", *extra, *args.set])
        rows.append(row(label, seconds, summary))

    header = ["retrain", "wall s", "teacher s", "distill s", "teacher epochs", "teacher MSE", "student MSE",
              "MLP MSE", "gate: challenger vs champion (val MSE)"]
    write_section("recurring", "\n".join([
        "## Recurring retrain: cold vs warm start (ETTh1, horizon 96, rolling split)",
        "",
        f"Command: `python -m bench.bench_recurring --new-rows {args.new_rows}"
        + "".join(f" --set {item}" for item in args.set) + f"` ({date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, load {load:.1f} at the start). Day 2 appends {args.new_rows} rows "
        f"({args.new_rows / (len(lines) - 1):.1%}) to day 1's file; both day-2 rows are scored on the same "
        "newest test windows (test MSE, standardized) and, by the gate, on the same newest validation windows "
        "against day 1's student. One run each, in a new process.",
        "",
        markdown_table(header, rows),
    ]), READING["recurring"])


if __name__ == "__main__":
    sys.exit(main())
