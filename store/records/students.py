"""A horizon's distilled student and plain-MLP baseline (runs/<name>/<run-id>/h<S>/students.json
beside student.pt and baseline.pt), and a quantile student's calibrated intervals."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from timedistill.store.record import Record
from timedistill.store.records.models import ModelSpec, TrainedModel, TrainingRun, training

Role = Literal["student", "baseline"]
ROLES: tuple[Role, ...] = ("student", "baseline")


class IntervalScore(Record):
    """One central interval of a quantile student (levels `lower` to `upper`), scored on the
    test split over every element of every window, in the standardized space."""

    lower: float
    upper: float
    val_coverage_raw: float  # share of validation values inside the uncorrected interval
    test_coverage_raw: float  # the same on the test split
    test_coverage: float  # after the conformal correction: what is served
    test_width: float  # mean width after the correction

    @property
    def goal(self) -> float:
        return self.upper - self.lower

    def describe(self) -> str:
        return (f"{self.goal:.0%} interval: {self.test_coverage:.1%} of test values inside (uncorrected "
                f"{self.test_coverage_raw:.1%}), mean width {self.test_width:.3f}")


class Intervals(Record):
    """How a quantile student's intervals were calibrated, and how they cover the test split."""

    levels: list[float]
    method: str  # how the correction was set
    calibration_windows: int
    half_life_windows: float | None = None  # a window's weight halves every so many windows of age
    intervals: list[IntervalScore]  # the widest first

    def describe(self) -> str:
        return "; ".join(interval.describe() for interval in self.intervals)


class StudentsRun(TrainingRun):
    """The distilled student and the plain-MLP baseline of one horizon (students.json beside
    student.pt and baseline.pt)."""

    teacher_dir: str = Field(alias="teacher")
    teacher_name: str
    teacher_dirs: list[str] | None = Field(None, exclude_if=lambda dirs: dirs is None)  # teacher.names: each teacher
    teacher_weights: list[float] | None = Field(None, exclude_if=lambda weights: weights is None)  # None: learned
    cache_dir: str | None = Field(alias="cache")
    use_cache: bool
    teacher_forward_batches: int  # teacher batches run online (0 with the cache)
    distill: dict[str, Any]  # the distill section it was trained with
    models: dict[Role, TrainedModel]
    intervals: Intervals | None = Field(None, exclude_if=lambda intervals: intervals is None)  # student.quantiles
    directory: str = Field(exclude=True)
    cached: bool = Field(False, exclude=True)

    @property
    def student(self) -> TrainedModel:
        return self.models["student"]

    @property
    def baseline(self) -> TrainedModel | None:
        return self.models.get("baseline")

    def weights_path(self, role: Role) -> str:
        return f"{self.directory}/{role}.pt"

    def spec(self, role: Role) -> ModelSpec:
        trained = self.models[role]
        return ModelSpec(name=trained.name, lookback=self.lookback, horizon=self.horizon, n_vars=self.n_vars,
                         hparams=trained.hparams, quantiles=trained.quantiles)

    def describe(self) -> str:
        baseline = f", MLP {self.baseline.test_mse:.4f}" if self.baseline else ""
        warm = ", warm start" if self.warm_from else ""
        return (f"h={self.horizon} {self.student.name}: {training(self.student.history)}{warm}; test MSE "
                f"{self.student.test_mse:.4f}{baseline}")
