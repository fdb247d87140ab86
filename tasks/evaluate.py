"""Evaluation: teacher vs distilled student vs plain-MLP baseline on the test split, one
ResultRow per horizon (MSE and MAE over every element of every test window, standardized
space), and the run's reports written from them."""

from __future__ import annotations

import numpy as np

from timedistill.store.forecaster import ForecastModel
from timedistill.store.records import Dataset, Evaluation, ResultRow, StudentsRun, Teacher, WindowRange
from timedistill.store.scaler import Scaler
from timedistill.store.storage import Storage
from timedistill.tasks.report import forecast_figure, report_markdown, training_figure
from timedistill.tasks.windows import WindowBatcher


def evaluate(storage: Storage, dataset: Dataset, run_dir: str, run_id: str, teachers: list[Teacher],
             students: list[StudentsRun]) -> Evaluation:
    """Compare every horizon; write report.md, forecast.png and training.png into the run folder
    (each atomically)."""
    rows = [ResultRow.compare(teacher, run) for teacher, run in zip(teachers, students, strict=True)]
    markdown = report_markdown(dataset.name, run_id, rows)
    storage.write_bytes(f"{run_dir}/report.md", markdown.encode())
    storage.write_bytes(f"{run_dir}/forecast.png", forecast_figure(storage, dataset, teachers, students))
    storage.write_bytes(f"{run_dir}/training.png", training_figure(teachers, students))
    return Evaluation(dataset=dataset.name, run_id=run_id, rows=rows, run_dir=storage.uri(run_dir), markdown=markdown)


def score_windows(model: ForecastModel, values: np.ndarray, starts: np.ndarray, scaler: Scaler,
                  batch_size: int = 256) -> float:
    """The MSE of a model's forecasts over windows of a series in data units [T, C], measured in
    the standardized space of `scaler`: models trained with other scalers (a champion trained on
    older data) are compared on one scale."""
    batcher = WindowBatcher(values, model.lookback, model.horizon)
    std = np.asarray(scaler.std, dtype=np.float64)
    squares, count = 0.0, 0
    for begin in range(0, len(starts), batch_size):
        x, y = batcher(starts[begin : begin + batch_size])
        error = (model.forecast(x.numpy()) - y.numpy()) / std  # [B, S, C]
        squares += float(np.square(error).sum())
        count += error.size
    return squares / max(count, 1)


def window_range(timestamps: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> WindowRange:
    """The windows at `starts` and the time their forecasts cover."""
    return WindowRange(count=len(starts), start=str(timestamps[starts[0] + lookback]),
                       end=str(timestamps[starts[-1] + lookback + horizon - 1]))
