"""`make gpu-check`: the GPU path (ray.use_gpu, bfloat16 autocast, NCCL between two workers) run for
real and held against a CPU run of the same work.

    python -m bench.gpu_check [--epochs 3]

The smoke config (800 rows of the shipped ETTh1, tiny models) with a few epochs, three times on
fresh storage roots: on the CPU; on 1 GPU with `ray.mixed_precision=true`; and, where the machine
has two GPUs, on 2 GPU workers (DDP over NCCL). Each GPU run's distilled student must reach a test
MSE within 2% of the CPU run's; the script prints every run's MSEs, step seconds and training
throughput (windows per second of the distill step), and exits 1 when a check fails. Without CUDA
it says so and exits 0, so that `make gpu-check` can run anywhere.

On GPU machines without a package index (an air-gapped cluster whose image brings its own CUDA
torch), `make gpu-kit` on a machine with one and bench/offline_kit.py on the target stand in for
`make install`; the check then runs from outside the checkout, whose root `timedistill/` would
shadow the unpacked package: `cd /tmp && PYTHONPATH=SITE python3 "$OLDPWD/bench/gpu_check.py"`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TOLERANCE = 0.02  # the GPU student's test MSE against the CPU student's


@dataclass(frozen=True)
class Outcome:
    name: str
    student_mse: float
    teacher_mse: float
    baseline_mse: float
    teacher_s: float
    distill_s: float
    windows_per_s: float
    seconds: float


def run(name: str, overrides: list[str], root: Path, epochs: int) -> Outcome:
    from timedistill.flows.retrain import retrain

    began = time.perf_counter()
    summary = retrain(config="smoke", overrides=[f"storage.root={root / name}", f"teacher.epochs={epochs}",
                                                 f"distill.epochs={epochs}", *overrides])
    seconds = time.perf_counter() - began
    (result,) = summary.results
    (students,) = summary.students
    (cache,) = summary.caches
    distill_s = summary.steps["distill"].seconds
    trained = cache.rows["train"] * students.student.epochs
    return Outcome(name=name, student_mse=result.student.test_mse, teacher_mse=result.teacher.test_mse,
                   baseline_mse=result.baseline.test_mse if result.baseline else float("nan"),
                   teacher_s=summary.steps["teacher"].seconds, distill_s=distill_s,
                   windows_per_s=trained / distill_s, seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
              "nothing to check")
        return 0
    gpus = torch.cuda.device_count()
    print(f"gpu-check: {gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    runs = {"cpu": ["ray.use_gpu=false"],
            "1 gpu, bf16": ["ray.use_gpu=true", "ray.num_workers=1", "ray.mixed_precision=true"]}
    if gpus >= 2:
        runs["2 gpus, bf16, nccl"] = ["ray.use_gpu=true", "ray.num_workers=2", "ray.mixed_precision=true"]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as root:
        outcomes = [run(name, overrides, Path(root), args.epochs) for name, overrides in runs.items()]
    reference = outcomes[0].student_mse
    failed = False
    print(f"\n{'run':<20} {'student':>8} {'vs cpu':>7} {'teacher':>8} {'MLP':>8} {'teacher s':>9} "
          f"{'distill s':>9} {'windows/s':>9} {'wall s':>7}")
    for outcome in outcomes:
        change = outcome.student_mse / reference - 1
        bad = abs(change) > TOLERANCE
        failed |= bad
        print(f"{outcome.name:<20} {outcome.student_mse:>8.4f} {change:>+7.1%} {outcome.teacher_mse:>8.4f} "
              f"{outcome.baseline_mse:>8.4f} {outcome.teacher_s:>9.1f} {outcome.distill_s:>9.1f} "
              f"{outcome.windows_per_s:>9,.0f} {outcome.seconds:>7.1f}{'  OUTSIDE 2%' if bad else ''}")
    print(f"\ngpu-check: {'FAILED' if failed else 'passed'} (student test MSE within {TOLERANCE:.0%} of the CPU run's)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
