"""The framework's overhead: `timedistill retrain` against a plain PyTorch script of the same work
(bench/plain.py), side by side, alternating, each in a new process.

    python -m bench.bench_overhead [--rounds 2]

The work: ETTh1, lookback 720, horizon 96, the iTransformer teacher for 3 epochs, the plain MLP and
the distilled MLP for up to 8 epochs each. The CLI run uses the project's defaults (on a local Ray:
one training worker with every CPU) on a fresh storage root, so every step runs; the plain script
uses as many torch threads as the machine has CPUs. Medians over the rounds; the ratio is the CLI's
median wall time over the script's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from bench.report import markdown_table, write_section

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "overhead": """\
The CLI pays fixed costs the script does not ("Start-up"), which weigh less as runs grow. The teacher's test
MSE matches the script's; the two MLPs' move with batch order, which the streamed cache sets in the CLI.""",
}

PROJECT = Path(__file__).resolve().parent.parent
ROOT = PROJECT / "bench" / ".artifacts" / "overhead"
WORK = ["--set", "data.horizons=[96]", "--set", "teacher.epochs=3", "--set", "distill.epochs=8"]


def timed(command: list[str]) -> tuple[float, dict]:
    began = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{command[2]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 1
    plain_runs, cli_runs = [], []
    for round_ in range(args.rounds):
        plain_runs.append(timed([sys.executable, "-m", "bench.plain", "--threads", str(cpus)]))
        root = ROOT / f"round-{round_}"
        shutil.rmtree(root, ignore_errors=True)
        cli_runs.append(timed([sys.executable, "-m", "timedistill.flows.cli", "retrain", "etth1", "--json", *WORK,
                               "--set", f"storage.root={root}"]))
        print(f"round {round_ + 1}: plain {plain_runs[-1][0]:.0f}s, CLI {cli_runs[-1][0]:.0f}s", flush=True)
    plain = statistics.median(seconds for seconds, _ in plain_runs)
    cli = statistics.median(seconds for seconds, _ in cli_runs)
    steps = {name: statistics.median(summary["steps"][name]["seconds"] for _, summary in cli_runs)
             for name in cli_runs[0][1]["steps"]}
    parts = {name: statistics.median(report["seconds"][name] for _, report in plain_runs)
             for name in plain_runs[0][1]["seconds"]}
    (result,) = cli_runs[-1][1]["results"]
    scores = plain_runs[-1][1]["test_mse"]
    rows = [["wall time (median)", f"{plain:.0f} s", f"{cli:.0f} s", f"{cli / plain:.2f}x"],
            ["data / ingest", f"{parts['data']:.1f} s", f"{steps['ingest']:.1f} s", ""],
            ["teacher", f"{parts['teacher']:.0f} s", f"{steps['teacher']:.0f} s", ""],
            ["cache", "-", f"{steps['cache']:.0f} s", ""],
            ["plain + distilled MLP", f"{parts['mlp'] + parts['distilled']:.0f} s (two loops)",
             f"{steps['distill']:.0f} s (one loop)", ""],
            ["evaluate + register", "-", f"{steps['evaluate'] + steps['register']:.1f} s", ""],
            ["start-up and the rest", "-", f"{cli - sum(steps.values()):.0f} s", ""],
            ["teacher test MSE", f"{scores['teacher']:.4f}", f"{result['teacher']['test_mse']:.4f}", ""],
            ["plain MLP test MSE", f"{scores['mlp']:.4f}", f"{result['baseline']['test_mse']:.4f}", ""],
            ["distilled MLP test MSE", f"{scores['student']:.4f}", f"{result['student']['test_mse']:.4f}", ""]]
    write_section("overhead", "\n".join([
        "## Framework overhead: the CLI against a plain PyTorch script (ETTh1, horizon 96)",
        "",
        f"Command: `python -m bench.bench_overhead --rounds {args.rounds}` ({date.today()}, {platform.machine()}, "
        f"{cpus} cores). Teacher iTransformer 3 epochs, plain and distilled MLP up to 8 epochs; the script "
        f"(bench/plain.py) with {cpus} torch threads, the CLI with its defaults on a fresh storage root. "
        "Alternating, each a new process; medians over the rounds (test MSE: the last round).",
        "",
        markdown_table(["", "plain script", "timedistill retrain", "ratio"], rows),
    ]), READING["overhead"])


if __name__ == "__main__":
    sys.exit(main())
