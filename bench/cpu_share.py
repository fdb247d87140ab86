"""Where a CLI run's CPU goes: the overhead workload of bench/bench_overhead.py
run once through `timedistill retrain`, with every process it starts (the command, Prefect's
temporary server, Ray's daemons, Ray Train's and Ray Data's actors, the training workers) read
from /proc twice a second; CPU-seconds summed by kind.

    python -m bench.cpu_share [--no-write]

On a 2-core machine a CPU-second spent outside the training workers is one the training threads
could have had, so this table says what the fixed costs of bench.startup cost in CPU, and which
of them run beside the training. A process's last reading is at most half a second before it
exits, so short-lived processes are slightly under-counted. Linux only.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from bench.bench_overhead import PROJECT, ROOT, WORK
from bench.report import markdown_table, write_section

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "cpu-share": """\
Most of the CPU goes to the training workers. Next comes Ray Train's own: each run starts four processes beside
its worker (controller, placement-group cleaner, synchronization actor, dataset manager), which together take
more than the driver and Prefect's server.""",
}

TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.5
# kind of process -> the group it belongs to in the table, in the table's order
GROUPS = {
    "RayTrainWorker": "training workers (teacher, students)",
    "timedistill retrain": "the command (driver: steps, evaluate, report)",
    "MapWorker": "Ray Data: the cache's inference actor",
    "TrainController": "Ray Train: per run, beside its workers",
    "PlacementGroupCleaner": "Ray Train: per run, beside its workers",
    "SynchronizationActor": "Ray Train: per run, beside its workers",
    "DatasetManager": "Ray Train: per run, beside its workers",
    "_AutoscalingCoordinatorActor": "Ray Train and Ray Data: shared",
    "_StatsActor": "Ray Data: per job",
    "ActorLocationTracker": "Ray Data: per job",
    "_QueueActor": "progress to the terminal (a Ray queue per run)",
    "Prefect's server": "Prefect's temporary server",
}
RAY_DAEMONS = "Ray's daemons (GCS, raylet, dashboard, agents, idle workers)"
DAEMON_KINDS = {"ray", "IDLE", "DashboardAgent", "RuntimeEnvAgent"}


@dataclass
class Seen:
    kind: str
    cpu_s: float


def kind_of(pid: int, command_pid: int) -> str | None:
    """What a process is, from its command line; None once it has gone."""
    try:
        line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    if pid == command_pid:
        return "timedistill retrain"
    if line.startswith("ray::"):  # an actor's title: ray::Class.method or ray::Class
        name = line.split()[0].removeprefix("ray::").split(".")[0]
        return re.sub(r"^MapWorker.*", "MapWorker", name)
    if "prefect" in line or "uvicorn" in line:
        return "Prefect's server"
    return "ray" if "ray" in line else None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def watch(command: list[str]) -> tuple[float, dict[int, Seen]]:
    """Run `command`; every process that appears meanwhile, with its CPU time last read."""
    before, seen = pids(), {}
    # the command's progress goes to a file: a pipe nobody reads could fill and stop it
    with tempfile.TemporaryFile("w+") as log:
        began = time.perf_counter()
        child = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=log, text=True)
        while True:
            done = child.poll() is not None
            for pid in pids() - before - {os.getpid()}:
                cpu, kind = cpu_seconds(pid), kind_of(pid, child.pid)
                if cpu is None or kind is None:
                    continue
                if pid in seen:  # an actor's title changes as it runs: keep the most specific
                    seen[pid].cpu_s = cpu
                    if seen[pid].kind in DAEMON_KINDS and kind not in DAEMON_KINDS:
                        seen[pid].kind = kind
                else:
                    seen[pid] = Seen(kind, cpu)
            if done:
                break
            time.sleep(SAMPLE_S)
        wall_s = time.perf_counter() - began
        if child.returncode != 0:
            log.seek(0)
            raise SystemExit(f"the CLI run failed ({child.returncode}):\n{log.read()[-3000:]}")
    return wall_s, seen


def table(wall_s: float, seen: dict[int, Seen]) -> str:
    cpu, count = defaultdict(float), defaultdict(int)
    others = sorted({p.kind for p in seen.values() if p.kind not in GROUPS and p.kind not in DAEMON_KINDS})
    other = f"other Ray actors and tasks ({', '.join(others)})"
    for process in seen.values():
        group = GROUPS.get(process.kind, RAY_DAEMONS if process.kind in DAEMON_KINDS else other)
        cpu[group] += process.cpu_s
        count[group] += 1
    total = sum(cpu.values())
    order = list(dict.fromkeys([*GROUPS.values(), other, RAY_DAEMONS]))
    rows = [[group, count[group], f"{cpu[group]:.1f}", f"{cpu[group] / total:.0%}"] for group in order if group in cpu]
    rows.append(["all", sum(count.values()), f"{total:.1f}", "100%"])
    cores = os.cpu_count() or 1
    return "\n".join([
        "## Where a CLI run's CPU goes (ETTh1, horizon 96, the overhead workload)",
        "",
        f"Command: `python -m bench.cpu_share` ({date.today()}, {platform.machine()}, {cores} cores). One "
        "`timedistill retrain etth1` run with bench.bench_overhead's settings on a fresh storage root; every "
        f"process it started read from /proc every {SAMPLE_S:g} s, CPU-seconds (user + system) summed by kind. "
        f"The run took {wall_s:.0f} s of wall time, so the machine had {wall_s * cores:.0f} CPU-seconds.",
        "",
        markdown_table(["processes", "count", "CPU s", "share"], rows),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("bench.cpu_share reads /proc: Linux only")
    root = ROOT / "cpu-share"
    shutil.rmtree(root, ignore_errors=True)
    wall_s, seen = watch([sys.executable, "-m", "timedistill.flows.cli", "retrain", "etth1", *WORK,
                          "--set", f"storage.root={root}"])
    text = table(wall_s, seen)
    print(text)
    if not args.no_write:
        write_section("cpu-share", text, READING["cpu-share"])


if __name__ == "__main__":
    main()
