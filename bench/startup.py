"""Where a CLI run's fixed costs go, each timed alone: the imports of the
command, Prefect's temporary server, a local Ray, and, on that Ray, a Ray Train run and a Ray
Data actor job that do no work at all (twice each: the first run of a kind pays for what later
runs reuse). Every round is a fresh process; the table holds the medians.

    python -m bench.startup [--rounds 3] [--no-write]
    python -m bench.startup --check [--rounds 3]     # did a fixed cost grow? (exit 1 if one did)

`--check` measures the same and compares each median with the table in BENCHMARKS.md: a cost
whose median is above the recorded range by more than that range's width (its spread, at least
FLOOR_S) grew, and is named; the table is left alone. For whoever changes the runtime (Ray's
start, a training run, the imports): the fixed cost of a retrain must not grow unnoticed.

`timedistill retrain` pays the imports and Prefect's server side by side (the server starts in a
thread while the command imports), then Ray's start, one Ray Train run for the teacher, a Ray
Data job for the cache and one Ray Train run for the students: bench/bench_overhead.py has the
whole run against a plain script.
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
import warnings
from collections.abc import Callable
from datetime import date
from typing import Any

from bench.report import BENCHMARKS_MD, markdown_table, sections, write_section

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "startup": """\
Ray's part alone (its start and stop, two Ray Train runs, one Ray Data job) is more than half of what the CLI
adds to the plain script in "Framework overhead"; a run of each kind after the first is cheaper.""",
}


FLOOR_S = 0.5  # a recorded range narrower than this still allows this much for noise


def recorded(markdown: str) -> dict[str, tuple[float, float, float]]:
    """The table of the startup section: fixed cost -> (median, lowest, highest)."""
    found = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and " - " in cells[2]:
            low, high = (float(value) for value in cells[2].split(" - "))
            found[cells[0]] = (float(cells[1]), low, high)
    return found


def grown(now: dict[str, float], before: dict[str, tuple[float, float, float]]) -> list[str]:
    """The fixed costs whose median now is above their recorded range by more than its spread."""
    verdicts = []
    for name, median in now.items():
        if name not in before:
            continue
        _, low, high = before[name]
        if median > high + max(high - low, FLOOR_S):
            verdicts.append(f"{name}: {median:.1f} s now, {low:.1f} - {high:.1f} s recorded")
    return verdicts


def timed(action: Callable[[], Any]) -> float:
    began = time.perf_counter()
    action()
    return round(time.perf_counter() - began, 2)


def empty_train_loop(config: dict) -> None:
    """A Ray Train worker that returns at once: what is left is the run's own cost."""


class Idle:
    """A Ray Data actor that passes its batches through."""

    def __call__(self, batch: Any) -> Any:
        return batch


def probe() -> dict[str, float]:
    """One round, in this process: every fixed cost, in the order a CLI run meets them."""
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    seconds = {"imports of `timedistill retrain` (a new process)": timed(lambda: subprocess.run(
        [sys.executable, "-c", "import timedistill.flows.cli, timedistill.flows.retrain, timedistill.tasks.steps"],
        check=True))}

    from timedistill.flows.prefect_server import temporary_prefect_server

    server = temporary_prefect_server()
    if server is not None:
        seconds["Prefect's temporary server: start"] = timed(server.start)

    import pyarrow as pa
    import ray
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from timedistill.tasks.runtime import quiet_ray_data, start_local_ray

    checkpoints = tempfile.mkdtemp(prefix="timedistill-startup-")
    seconds["a local Ray: start"] = timed(start_local_ray)
    quiet_ray_data()
    cpus = ray.cluster_resources()["CPU"]
    for attempt in ("first", "second"):
        trainer = TorchTrainer(empty_train_loop, scaling_config=ScalingConfig(num_workers=1,
                                                                              resources_per_worker={"CPU": cpus}),
                               run_config=RunConfig(name=f"empty-{attempt}-{time.time_ns()}",
                                                    storage_path=checkpoints))
        seconds[f"Ray Train: an empty run ({attempt})"] = timed(trainer.fit)
    table = pa.table({"x": list(range(1000))})
    for attempt in ("first", "second"):
        seconds[f"Ray Data: an empty actor job ({attempt})"] = timed(lambda: ray.get(
            ray.data.from_arrow(table).map_batches(Idle, batch_format="pyarrow",
                                                    compute=ray.data.ActorPoolStrategy(size=1), num_cpus=cpus,
                                                    max_restarts=0).to_arrow_refs()))
    seconds["a local Ray: stop"] = timed(ray.shutdown)
    if server is not None:
        seconds["Prefect's temporary server: stop"] = timed(server.stop)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    parser.add_argument("--check", action="store_true", help="compare with the table in BENCHMARKS.md; exit 1 "
                        "when a fixed cost grew by more than its spread (BENCHMARKS.md is left alone)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # one round, as JSON
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe()))
        return
    rounds = []
    for round_ in range(args.rounds):
        done = subprocess.run([sys.executable, "-m", "bench.startup", "--probe"], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise SystemExit(f"round {round_ + 1} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        rounds.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"round {round_ + 1}: " + ", ".join(f"{value:.1f}" for value in rounds[-1].values()), flush=True)
    rows = [[name, f"{statistics.median(run[name] for run in rounds):.1f}",
             f"{min(run[name] for run in rounds):.1f} - {max(run[name] for run in rounds):.1f}"]
            for name in rounds[0]]
    text = "\n".join([
        "## Start-up: the fixed costs of a CLI run, each alone",
        "",
        f"Command: `python -m bench.startup --rounds {args.rounds}` ({date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores). Each round a fresh process; the Ray Train run and the Ray Data job do no work "
        "(one worker or actor with every CPU), so what they take is their own cost.",
        "",
        markdown_table(["fixed cost", "seconds (median)", "range"], rows),
    ])
    print(text)
    if args.check:
        before = recorded(sections(BENCHMARKS_MD.read_text())["startup"].markdown)
        medians = {name: statistics.median(run[name] for run in rounds) for name in rounds[0]}
        if verdicts := grown(medians, before):
            raise SystemExit("fixed costs that grew:\n  " + "\n  ".join(verdicts))
        print(f"no fixed cost grew beyond its recorded spread ({len(before)} compared)")
    elif not args.no_write:
        write_section("startup", text, READING["startup"])


if __name__ == "__main__":
    sys.exit(main())
