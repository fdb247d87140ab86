"""Evaluation: teacher vs distilled student vs plain-MLP baseline on the test split, one
ResultRow per horizon (MSE and MAE over every element of every test window, standardized
space), and the run's reports written from them."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

from timedistill.models import Forecaster
from timedistill.store.forecaster import ForecastModel
from timedistill.store.records import (
    Dataset,
    Evaluation,
    Latency,
    ModelScore,
    ResultRow,
    StudentsRun,
    Teacher,
    TeacherChoice,
    TeacherSet,
    WindowRange,
)
from timedistill.store.scaler import Scaler
from timedistill.store.series import standardized_series
from timedistill.store.storage import Storage
from timedistill.store.weights import load_teacher, load_trained
from timedistill.tasks.report import forecast_figure, report_markdown, training_figure
from timedistill.tasks.windows import WindowBatcher, window_starts


def evaluate(storage: Storage, dataset: Dataset, run_dir: str, run_id: str, teachers: list[Teacher],
             students: list[StudentsRun], choices: Sequence[TeacherChoice] = (),
             sets: dict[int, TeacherSet] | None = None) -> Evaluation:
    """Compare every horizon; write report.md, forecast.png and training.png into the run folder
    (each atomically). `choices`: how teacher.name auto picked each horizon's teacher; `sets`:
    with teacher.names, every horizon's teachers (`teachers` holds the best of each)."""
    series, sets = standardized_series(storage, dataset), sets or {}
    rows = [compare(teacher, run, time_models(storage, dataset, series, teacher, run))
            for teacher, run in zip(teachers, students, strict=True)]
    rows = [row.model_copy(update={"teachers": [member.score() for member in sets[row.horizon].members]})
            if row.horizon in sets else row for row in rows]
    markdown = report_markdown(dataset.name, run_id, rows, choices, list(sets.values()))
    storage.write_bytes(f"{run_dir}/report.md", markdown.encode())
    storage.write_bytes(f"{run_dir}/forecast.png", forecast_figure(storage, dataset, series, teachers, students))
    storage.write_bytes(f"{run_dir}/training.png", training_figure(teachers, students))
    return Evaluation(dataset=dataset.name, run_id=run_id, rows=rows, run_dir=storage.uri(run_dir), markdown=markdown)


def compare(teacher: Teacher, students: StudentsRun, latency: Latency | None = None) -> ResultRow:
    """The comparison of one horizon; `latency` replaces the models' own latency fields."""
    scores: dict[str, ModelScore] = {"teacher": teacher.score(),
                                     **{role: trained.score() for role, trained in students.models.items()}}
    if latency is not None:
        scores = {role: score.model_copy(update={"latency_ms": latency.ms[role]}) for role, score in scores.items()}
    teach, student, baseline = scores["teacher"], scores["student"], scores.get("baseline")
    return ResultRow(
        dataset=students.dataset, horizon=students.horizon, teacher=teach, student=student, baseline=baseline,
        student_vs_teacher_pct=gain(student.test_mse, teach.test_mse),
        student_vs_baseline_pct=gain(student.test_mse, baseline.test_mse) if baseline else None,
        param_ratio=teach.params / student.params,
        speedup=teach.latency_ms / student.latency_ms if teach.latency_ms and student.latency_ms else None,
        device=latency.device if latency else students.device,
        latency_batch=latency.batch if latency else None, latency_threads=latency.threads if latency else None,
        intervals=students.intervals,
    )


def gain(value: float, reference: float) -> float:
    """Relative MSE reduction in %: positive when `value` is better (lower) than `reference`."""
    return 100.0 * (reference - value) / reference


def score_windows(model: ForecastModel, values: np.ndarray, starts: np.ndarray, scaler: Scaler) -> float:
    """The MSE of a model's forecasts over windows of a series in data units [T, C], measured in
    the standardized space of `scaler`: models trained with other scalers (a champion trained on
    older data) are compared on one scale."""
    batcher = WindowBatcher(values, model.lookback, model.horizon)
    std = np.asarray(scaler.std, dtype=np.float64)
    squares, count, batch = 0.0, 0, batcher.inference_batch
    for begin in range(0, len(starts), batch):
        x, y = batcher(starts[begin : begin + batch])
        error = (model.forecast(x.numpy()) - y.numpy()) / std  # [B, S, C]
        squares += float(np.square(error).sum())
        count += error.size
    return squares / max(count, 1)


def window_range(timestamps: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> WindowRange:
    """The windows at `starts` and the time their forecasts cover."""
    return WindowRange(count=len(starts), start=str(timestamps[starts[0] + lookback]),
                       end=str(timestamps[starts[-1] + lookback + horizon - 1]))


LATENCY_BATCH, LATENCY_THREADS, LATENCY_REPEATS = 32, 1, 30


@torch.inference_mode()
def time_models(storage: Storage, dataset: Dataset, series: np.ndarray, teacher: Teacher,
                run: StudentsRun) -> Latency:
    """Teacher, student and MLP each timed the same way, here in the flow's process once training
    is done (nothing else runs in it): the median of repeated forward passes on one batch of test
    windows, on the CPU, with a fixed number of torch threads."""
    starts = window_starts(dataset.splits["test"], teacher.lookback, teacher.horizon)[:LATENCY_BATCH]
    x, _ = WindowBatcher(series, teacher.lookback, teacher.horizon)(starts)  # [B, L, C]
    models: dict[str, Forecaster] = {"teacher": load_teacher(storage, teacher),
                                     **{role: load_trained(storage, run, role) for role in run.models}}
    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        ms = {role: median_ms(model, x) for role, model in models.items()}
    finally:
        torch.set_num_threads(threads)
    return Latency(ms=ms, batch=len(x), threads=LATENCY_THREADS, device="cpu")


def median_ms(model: torch.nn.Module, x: torch.Tensor, warmup: int = 3) -> float:
    for _ in range(warmup):  # the allocator's first calls
        model(x)
    times = []
    for _ in range(LATENCY_REPEATS):
        began = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)

