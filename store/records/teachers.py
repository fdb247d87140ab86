"""The teachers of a horizon: each trained teacher (teachers/<name>/<key>/teacher.json beside its
weights), how teacher.name auto chose among candidates, how teacher.names weighs its members, and
what the teacher step hands the cache and distill steps."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from timedistill.store.record import Record
from timedistill.store.records.models import ModelScore, ModelSpec, TrainedModel, TrainingRun, training

TEACHER_WEIGHTS = "teacher.pt"


class Teacher(TrainingRun, TrainedModel):
    """A trained teacher (teacher.json beside teacher.pt, its best weights)."""

    feature_dim: int  # width of its per-variable feature [B, C, d]
    sha256: str  # of teacher.pt: the cache is keyed by it
    directory: str = Field(exclude=True)
    key: str = Field(exclude=True)
    cached: bool = Field(False, exclude=True)  # an earlier run's teacher was reused

    @property
    def weights_path(self) -> str:
        return f"{self.directory}/{TEACHER_WEIGHTS}"

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.name, lookback=self.lookback, horizon=self.horizon, n_vars=self.n_vars,
                         hparams=self.hparams)

    def describe(self) -> str:
        warm = ", warm start" if self.warm_from else ""
        return f"h={self.horizon} {self.name}: {training(self.history)}{warm}, val MSE {self.val_mse:.4f}"


class TeacherChoice(Record):
    """teacher.name auto at one horizon: every candidate's scores and the one kept (the lowest
    validation MSE; the test split plays no part in the choice)."""

    horizon: int
    chosen: str
    candidates: list[ModelScore]  # in the order of teacher.candidates

    def describe(self) -> str:
        others = ", ".join(f"{c.name} {c.val_mse:.4f}" for c in self.candidates if c.name != self.chosen)
        chosen = next(c for c in self.candidates if c.name == self.chosen)
        return f"h={self.horizon} teacher auto: {self.chosen} (val MSE {chosen.val_mse:.4f}; {others})"


class TeacherSet(Record):
    """teacher.names at one horizon: the teachers one student learns from, and the weights that
    combine their predictions (distill.teacher_weighting; None: learned while distilling)."""

    horizon: int
    weighting: str
    members: list[Teacher]  # in the order of teacher.names
    weights: list[float] | None

    def to_json(self) -> dict[str, Any]:
        return {"horizon": self.horizon, "weighting": self.weighting, "weights": self.weights,
                "members": [member.score().to_json() for member in self.members]}

    @property
    def primary(self) -> Teacher:
        """The member with the lowest validation MSE: the teacher the results compare against."""
        return min(self.members, key=lambda member: member.val_mse)

    @property
    def cached(self) -> bool:
        return all(member.cached for member in self.members)

    def describe(self) -> str:
        weights = self.weights or [float("nan")] * len(self.members)
        each = ", ".join(f"{m.name} (val MSE {m.val_mse:.4f}, weight {w:.2f})" for m, w in zip(self.members, weights,
                                                                                               strict=True))
        learned = " (weights learned while distilling)" if self.weights is None else ""
        return f"h={self.horizon} teachers {self.weighting}{learned}: {each}"


class HorizonTeachers(Record):
    """The teachers of one horizon as the teacher step leaves them: the whole input of the cache
    and distill steps. One teacher; or teacher.name auto, whose candidates are all trained and the
    one with the lowest validation MSE taught; or teacher.names, whose members all teach, their
    predictions combined by `weights`."""

    horizon: int
    trained: list[Teacher]  # every teacher trained (or reused) for this horizon, in the config's order
    sources: list[Teacher]  # those the student learns from
    weights: list[float] | None  # how the sources' predictions combine; None: learned while distilling
    chosen: Teacher  # the one the results compare the student with
    choice: TeacherChoice | None = None  # teacher.name auto: every candidate's scores and the pick
    ensemble: TeacherSet | None = None  # teacher.names: the members' scores and weights

    @property
    def cached(self) -> bool:
        """Every teacher was reused: nothing was trained."""
        return all(teacher.cached for teacher in self.trained)

    def describe(self) -> str:
        if self.choice is not None:
            return self.choice.describe()
        if self.ensemble is not None:
            return self.ensemble.describe()
        return self.chosen.describe()
