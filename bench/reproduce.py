"""Reproduce the paper's protocol: teacher vs distilled student vs plain MLP, row by row, through
the same code as `timedistill retrain` (the Prefect flow), on CPU or GPU. Resumable: rows already
in the results file are skipped, so a long campaign can be spread over several runs.

    python -m bench.reproduce --rows etth1:itransformer etth1:moderntcn ettm1:itransformer weather:itransformer \
        --data-dir DIR
    python -m bench.reproduce --ablations            # ETTh1 h96: ablations, other students, cache on/off
    python -m bench.reproduce --ablations --seeds 3  # each row with distill seeds 2021, 2022, 2023
    python -m bench.reproduce --ablations full quantiles --on weather:itransformer:96 --data-dir DIR  # elsewhere
    python -m bench.reproduce --tables               # BENCHMARKS.md tables from the results files

A row is DATASET:TEACHER[:STUDENT] at every horizon of --horizons (default 96 192 336 720);
TEACHER may name several joined by "+" (etth1:itransformer+moderntcn: teacher.names, one student).
The benchmark files come from --data-dir (default data/, which ships ETTh1.csv only; data/README.md
lists the others and where they come from); a missing one stops the command before any row runs.
Artifacts go to --root (default bench/.artifacts; teachers and caches are reused across rows and
variants). Each row records the git commit, the device, the wall time and the seed. With --seeds N
every row runs with N distill seeds (2021, 2022, ...): the student and the plain MLP train again for
each, the teacher is trained once (its own `teacher.seed`) and reused, so the spread is the
student's and the MLP's, not the teacher's. The protocol is docs/method.md's: lookback 720, the
split and scaler conventions, early stopping, the best checkpoint restored, every test window
counted. It prints a line per training epoch (validation MSE, seconds) and Prefect's line per step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ACCURACY = RESULTS / "accuracy.json"
ABLATIONS = RESULTS / "ablations.json"
FILES = {
    "etth1": "ETTh1.csv",
    "ettm1": "ETTm1.csv",
    "weather": "weather.csv",
    "exchange": "exchange_rate.csv",
    "illness": "national_illness.csv",
}
# method.md: the released (alpha, beta) per dataset and teacher; alpha = beta = 1 otherwise
RELEASED = {
    ("etth1", "moderntcn"): (2, 2),
    ("etth1", "itransformer"): (2, 2),
    ("ettm1", "moderntcn"): (2, 0.1),
    ("ettm1", "itransformer"): (1, 1),
    ("weather", "moderntcn"): (0.5, 2),
    ("weather", "itransformer"): (0.1, 0.1),
}
VARIANTS = {  # by default on ETTh1 h96 with the iTransformer teacher (--on)
    "full": [],
    "no-sup": ["distill.sup=false"],
    "no-period": ["distill.period=false"],
    "no-scale": ["distill.multiscale=false"],
    "no-feature": ["distill.beta=0"],
    # the teacher's features at their full width (ModernTCN's flattened patches: 11,520 at ETTh1),
    # where the default pools those wider than distill.feature_max_dim (1,024) down to it
    "unpooled-features": ["distill.feature_max_dim=1000000"],
    "student-tsmixer": ["student.name=tsmixer"],
    "student-lightts": ["student.name=lightts"],
    "online-teacher": ["distill.use_cache=false"],
    # the student and the plain MLP at a tenth of the paper's lr: is the MLP baseline under-trained at 0.01?
    "lr-0.001": ["distill.lr=0.001"],
    # beyond the paper: the teacher with the lower validation MSE of the two, per horizon
    "teacher-auto": ["teacher.name=auto", "teacher.candidates=[itransformer, moderntcn]"],
    # beyond the paper: one student from both teachers, weighted by their validation errors
    "teacher-names": ["teacher.names=[itransformer, moderntcn]"],
    # beyond the paper: 10% / 50% / 90% quantiles; its student MSE is the median's
    "quantiles": ["student.quantiles=[0.1, 0.5, 0.9]"],
    # the same, calibrated with every validation window weighing alike (plain split conformal)
    "quantiles-unweighted": ["student.quantiles=[0.1, 0.5, 0.9]", "student.calibration_half_life=null"],
}
KEY = ("dataset", "horizon", "teacher", "student", "variant", "seed")
FIRST_SEED = 2021  # DistillConfig.seed's default: a one-seed campaign is the default config


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def load_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def save_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(rows, key=lambda r: tuple(str(r.get(k)) for k in KEY)), indent=1) + "\n")
    os.replace(tmp, path)


def run_row(
    dataset: str, teacher: str, student: str, horizon: int, variant: str, seed: int, args: argparse.Namespace,
    extra: list[str],
) -> dict[str, Any]:
    from timedistill.conf import load_config
    from timedistill.flows.progress import StepProgress
    from timedistill.flows.retrain import progress, retrain

    members = teacher.split("+")  # several teachers for one student: teacher.names
    alpha, beta = RELEASED.get((dataset, members[0]), (1, 1))
    overrides = [
        f"data.path={Path(args.data_dir) / FILES[dataset]}",
        f"data.horizons=[{horizon}]",
        f"teacher.names=[{', '.join(members)}]" if len(members) > 1 else f"teacher.name={teacher}",
        f"student.name={student}",
        f"distill.alpha={alpha}",
        f"distill.beta={beta}",
        f"storage.root={args.root}",
        "registry.gate=always",
        f"ray.num_workers={args.workers}",
        f"ray.cpus_per_worker={args.cpus_per_worker}",
        *args.set,
        *extra,
        f"distill.seed={seed}",
    ]
    if args.gpu:
        overrides.append("ray.use_gpu=true")
    began = time.perf_counter()
    with StepProgress() as terminal, progress(terminal):  # a line per epoch from the training workers
        summary = retrain(config=dataset, overrides=overrides)
    seconds = time.perf_counter() - began
    (result,) = summary.results
    distill = load_config(dataset, overrides).distill
    baseline = result.baseline
    return {
        "dataset": dataset,
        "horizon": horizon,
        "teacher": teacher,
        "teacher_chosen": result.teacher.name,  # differs from `teacher` only under teacher.name auto
        "student": result.student.name,
        "variant": variant,
        "teacher_mse": result.teacher.test_mse,
        "teacher_mae": result.teacher.test_mae,
        "student_mse": result.student.test_mse,
        "student_mae": result.student.test_mae,
        "mlp_mse": baseline.test_mse if baseline else None,
        "mlp_mae": baseline.test_mae if baseline else None,
        "teacher_params": result.teacher.params,
        "student_params": result.student.params,
        "teacher_latency_ms": result.teacher.latency_ms,
        "student_latency_ms": result.student.latency_ms,
        "teacher_epochs": result.teacher.epochs,
        "student_epochs": result.student.epochs,
        "alpha": distill.alpha,
        "beta": distill.beta,
        "device": device_name(),
        "commit": commit(),
        "seconds": round(seconds, 1),
        "seed": distill.seed,
        "steps": {name: step.to_json() for name, step in summary.steps.items()},
        "teacher_cached": summary.steps["teacher"].cached,
        **({"intervals": result.intervals.to_json()} if result.intervals else {}),
    }


def wait_while_paused(pause_file: str | None) -> None:
    """Between rows, wait while the pause file exists (to free the machine for timed benchmarks)."""
    announced = False
    while pause_file and Path(pause_file).exists():
        if not announced:
            print(f"paused: {pause_file} exists", flush=True)
            announced = True
        time.sleep(10)


def campaign(specs: list[tuple[str, str, str, int, str, list[str]]], path: Path, args: argparse.Namespace) -> None:
    rows = load_rows(path)
    done = {tuple(r[k] for k in KEY) for r in rows}
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    for (dataset, teacher, student, horizon, variant, extra), seed in itertools.product(specs, seeds):
        wait_while_paused(args.pause_file)
        what = f"{dataset} h={horizon} {teacher}->{student} [{variant}] seed {seed}"
        if (dataset, horizon, teacher, student, variant, seed) in done:
            print(f"skip {what}: already in {path.name}", flush=True)
            continue
        print(f"run  {what}", flush=True)
        row = run_row(dataset, teacher, student, horizon, variant, seed, args, extra)
        print(
            f"     teacher {row['teacher_mse']:.4f}  student {row['student_mse']:.4f}  "
            f"mlp {row['mlp_mse'] if row['mlp_mse'] is None else round(row['mlp_mse'], 4)}  "
            f"({row['seconds']:.0f}s)",
            flush=True,
        )
        rows = [r for r in load_rows(path) if tuple(r[k] for k in KEY) != tuple(row[k] for k in KEY)] + [row]
        save_rows(path, rows)


def missing_data(datasets: set[str], data_dir: Path) -> str | None:
    """What keeps the rows from running, in one line: an unknown data set or a file not in data_dir."""
    if unknown := sorted(datasets - set(FILES)):
        return f"unknown data set {', '.join(unknown)} (known: {', '.join(FILES)})"
    files = [data_dir / FILES[dataset] for dataset in sorted(datasets)]
    if missing := [path for path in files if not path.is_file()]:
        return (f"{', '.join(map(str, missing))} not found: pass the folder of the benchmark files as --data-dir "
                "(data/README.md lists them)")
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=[], help="DATASET:TEACHER[:STUDENT]")
    parser.add_argument("--horizons", nargs="*", type=int, default=[96, 192, 336, 720])
    parser.add_argument("--ablations", nargs="*", choices=list(VARIANTS), metavar="VARIANT",
                        help="the ablations and other students (all, or those named)")
    parser.add_argument("--on", default="etth1:itransformer:96", metavar="DATASET:TEACHER:HORIZON",
                        help="where the ablations run (default: etth1:itransformer:96)")
    parser.add_argument("--seeds", type=int, default=1, help="distill seeds per row (2021, 2022, ...)")
    parser.add_argument("--tables", action="store_true", help="write the BENCHMARKS.md tables and exit")
    parser.add_argument("--data-dir", default=str(ROOT / "data"),
                        help="the folder of the benchmark files (default: data/, which ships ETTh1.csv)")
    parser.add_argument("--root", default=str(ROOT / "bench" / ".artifacts"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="extra config override for every row")
    parser.add_argument("--results", default=str(RESULTS), help="folder of accuracy.json and ablations.json")
    parser.add_argument("--pause-file", help="before each row, wait while this file exists")
    args = parser.parse_args(argv)
    accuracy, ablations_file = Path(args.results) / ACCURACY.name, Path(args.results) / ABLATIONS.name
    if not args.tables:
        specs = []
        for item in args.rows:
            dataset, teacher, *rest = item.split(":")
            specs += [(dataset, teacher, rest[0] if rest else "mlp", h, "full", []) for h in args.horizons]
        ablations = []
        if args.ablations is not None:
            chosen = args.ablations or list(VARIANTS)
            dataset, teacher, horizon = args.on.split(":")
            ablations = [(dataset, teacher, "mlp", int(horizon), variant, VARIANTS[variant]) for variant in chosen]
        if problem := missing_data({spec[0] for spec in specs + ablations}, Path(args.data_dir)):
            sys.exit(f"bench.reproduce: {problem}")
        if specs:
            campaign(specs, accuracy, args)
        for dataset, teacher, _, horizon, variant, extra in ablations:  # the student is part of the key
            student = next((e.split("=")[1] for e in extra if e.startswith("student.name=")), "mlp")
            campaign([(dataset, teacher, student, horizon, variant, extra)], ablations_file, args)
    if Path(args.results) == RESULTS:
        from bench.tables import write_tables

        write_tables()


if __name__ == "__main__":
    sys.exit(main())
