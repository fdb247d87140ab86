"""The README's main command, timed: `timedistill retrain conf/smoke.yaml` on fresh storage roots
(every step runs), then once more on the last root (every step is found done and skipped).

    python -m bench.bench_demo [--runs 3]

Each run is a new process, as a user's would be: Python imports, Prefect's temporary server, a
local Ray started and shut down. The CPU time the hypervisor gave to other machines (steal, from
/proc/stat) is reported beside each run: on shared machines it explains most of the spread.
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
import tempfile
import time
from datetime import date
from pathlib import Path

from bench.report import markdown_table, write_section

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "demo": """\
A fresh run is mostly Ray, Ray Train, Ray Data and Prefect starting around small models ("Start-up" times
each fixed cost); a second run with nothing changed finds every step done and only evaluates again.""",
}

PROJECT = Path(__file__).resolve().parent.parent


def cpu_ticks() -> tuple[int, int]:
    """(all ticks, steal ticks) of the machine so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[7]


def retrain(root: Path) -> dict:
    before, began = cpu_ticks(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "timedistill.flows.cli", "retrain", "conf/smoke.yaml", "--set", f"storage.root={root}",
         "--json"],
        cwd=PROJECT, capture_output=True, text=True, check=False)
    seconds, after = time.perf_counter() - began, cpu_ticks()
    if done.returncode != 0:
        raise SystemExit(f"retrain failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    total = max(after[0] - before[0], 1)
    return {"seconds": seconds, "steal": (after[1] - before[1]) / total, "steps": summary["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs on fresh storage roots")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="timedistill-demo-"))
    runs = []
    try:
        for index in range(args.runs):
            runs.append({"kind": "fresh", **retrain(scratch / f"run-{index}")})
            print(json.dumps(runs[-1]), flush=True)
        runs.append({"kind": "nothing changed", **retrain(scratch / f"run-{args.runs - 1}")})
        print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    steps = list(runs[0]["steps"])  # the flow's steps, in its order
    rows = [[r["kind"], f"{r['seconds']:.1f}",
             *[("cached" if r["steps"][s]["cached"] else f"{r['steps'][s]['seconds']:.1f}") for s in steps],
             f"{100 * r['steal']:.0f}%"] for r in runs]
    fresh = statistics.median(r["seconds"] for r in runs if r["kind"] == "fresh")
    text = "\n".join([
        "## The demo (`timedistill retrain conf/smoke.yaml`)",
        "",
        f"Command: `python -m bench.bench_demo --runs {args.runs}` ({date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores). Each run is a new process on a new storage root, the last one repeats the "
        "last root with nothing changed. Wall seconds of the whole command and of each step (the teacher step "
        "includes starting the local Ray); 'steal' is the share of the machine's CPU time the hypervisor gave "
        "to others during the run.",
        "",
        markdown_table(["run", "wall s", *steps, "steal"], rows),
        "",
        f"- Median of the fresh runs: **{fresh:.0f} s**.",
    ])
    print(text)
    write_section("demo", text, READING["demo"])


if __name__ == "__main__":
    main()
