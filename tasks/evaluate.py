"""Evaluation: teacher vs distilled student vs plain-MLP baseline on the test split, one
ResultRow per horizon (MSE and MAE over every element of every test window, standardized
space), and the run's reports written from them."""

from __future__ import annotations

from store.records import Dataset, Evaluation, ResultRow, StudentsRun, Teacher
from store.storage import Storage
from tasks.report import forecast_figure, report_markdown


def evaluate(storage: Storage, dataset: Dataset, run_dir: str, run_id: str, teachers: list[Teacher],
             students: list[StudentsRun]) -> Evaluation:
    """Compare every horizon; write report.md and forecast.png into the run folder (each
    atomically)."""
    rows = [ResultRow.compare(teacher, run) for teacher, run in zip(teachers, students, strict=True)]
    markdown = report_markdown(dataset.name, run_id, rows)
    storage.write_bytes(f"{run_dir}/report.md", markdown.encode())
    storage.write_bytes(f"{run_dir}/forecast.png", forecast_figure(storage, dataset, teachers, students))
    return Evaluation(dataset=dataset.name, run_id=run_id, rows=rows, run_dir=storage.uri(run_dir), markdown=markdown)
