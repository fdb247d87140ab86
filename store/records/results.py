"""The comparison of a run: teacher vs distilled student vs plain MLP per horizon, the latencies
it was timed with, and the reports written from it (tasks/evaluate.py makes them)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from timedistill.store.record import Record
from timedistill.store.records.models import Headline, ModelScore
from timedistill.store.records.students import Intervals


class Latency(Record):
    """Each model's forward pass timed the same way: once training is done, nothing else running
    in the process, the median of repeated calls on one batch, at a stated thread count."""

    ms: dict[str, float]  # role -> median milliseconds
    batch: int
    threads: int
    device: str


class ResultRow(Record):
    """Teacher vs distilled student vs plain MLP at one horizon, on the test split."""

    dataset: str
    horizon: int
    teacher: ModelScore
    student: ModelScore
    baseline: ModelScore | None = None
    student_vs_teacher_pct: float  # the student's MSE reduction: positive is better
    student_vs_baseline_pct: float | None = None
    param_ratio: float  # teacher params / student params
    speedup: float | None  # teacher latency / student latency
    device: str
    latency_batch: int | None = None  # what the latencies are: a forward pass of this many windows,
    latency_threads: int | None = None  # with this many torch threads (None in a row of format 1)
    intervals: Intervals | None = None  # the student's, with student.quantiles
    teachers: list[ModelScore] | None = None  # teacher.names: every teacher (`teacher`: the best of them)

    def scores(self) -> dict[str, ModelScore]:
        """teacher, student and (when trained) baseline, in that order."""
        found = {"teacher": self.teacher, "student": self.student, "baseline": self.baseline}
        return {role: score for role, score in found.items() if score is not None}

    def headline(self) -> dict[str, Headline]:
        return {role: score.headline() for role, score in self.scores().items()}

    def to_json(self) -> dict[str, Any]:
        unused = {"baseline", "student_vs_baseline_pct"} if self.baseline is None else set()
        unused |= {"latency_batch", "latency_threads"} if self.latency_batch is None else set()
        unused |= {"intervals"} if self.intervals is None else set()
        unused |= {"teachers"} if self.teachers is None else set()
        return self.model_dump(mode="json", exclude=unused)

    def describe(self) -> str:
        baseline = f", MLP {self.baseline.test_mse:.4f}" if self.baseline else ""
        return (f"h={self.horizon} test MSE: teacher {self.teacher.test_mse:.4f}, "
                f"student {self.student.test_mse:.4f}{baseline}")


class WindowRange(Record):
    """Windows scored together: how many, and the time their forecasts cover."""

    count: int
    start: str  # the first forecast step of the first window
    end: str  # the last forecast step of the last window


class Evaluation(Record):
    """The comparison of every horizon, and the reports written from it."""

    dataset: str
    run_id: str
    rows: list[ResultRow]
    run_dir: str  # a URI
    markdown: str  # report.md
    cached: bool = Field(False, exclude=True)  # evaluation always runs: it is cheap

    def describe(self) -> str:
        return f"{len(self.rows)} horizon(s); report.md and its plots in the run folder"
