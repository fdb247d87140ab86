"""A registered version (registry/<model>/v<k>/: config.json, scaler.json, metrics.json) as
serving reads it, and what the register step decided for one model and why."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field

from timedistill.conf.spans import duration
from timedistill.store.contract import Card
from timedistill.store.record import Record
from timedistill.store.records.models import Headline, ModelSpec
from timedistill.store.records.results import ResultRow, WindowRange
from timedistill.store.scaler import NamedScaler


class RegisteredModel(Record):
    """A registered version's config.json: what the student is and what it was trained on."""

    model: str
    version: str
    student: str  # the student's model name
    hparams: dict[str, Any]
    lookback: int
    horizon: int
    variables: list[str]
    target: str | None
    step: str  # the series' time step: 1h, 10min, 1d
    quantiles: list[float] = Field(default_factory=list, exclude_if=lambda levels: not levels)  # besides the point
    dataset: str
    data_fingerprint: str
    run_id: str
    teacher: str | None
    created: str
    timedistill_config: dict[str, Any]  # the whole config of the run that trained it
    timestamp: str | None = None  # the data's time column (None in a version of format 1, which did not say)
    # columns of its training data that were not variables: a history may hold them too
    ignored_columns: list[str] = Field(default_factory=list)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.student, lookback=self.lookback, horizon=self.horizon,
                         n_vars=len(self.variables), hparams=self.hparams, quantiles=self.quantiles)


class RegistryEntry(Record):
    """One complete registered version: what serving loads."""

    model: str
    version: str
    config: RegisteredModel
    scaler: NamedScaler
    metrics: ResultRow

    @property
    def folder(self) -> str:
        return f"registry/{self.model}/{self.version}"

    @property
    def weights_path(self) -> str:
        return f"{self.folder}/student.pt"

    @property
    def model_id(self) -> str:
        """How the server names this version (its multiplexed model id)."""
        return f"{self.model}@{self.version}"

    @property
    def card(self) -> Card:
        """What a history must be to be forecast by it (the forecast contract)."""
        held = self.config
        try:
            step: timedelta | None = duration(held.step)
        except ValueError:
            step = None
        return Card(model=self.model, variables=held.variables, time_column=held.timestamp, step=step,
                    ignored_columns=tuple(held.ignored_columns))

    def describe(self) -> str:
        return f"{self.model_id}: {self.config.spec.describe()}, student test MSE {self.metrics.student.test_mse:.4f}"


class ChampionDecision(Record):
    """The registered LATEST (champion) and a new student (challenger), scored on the same
    windows by the same code, in the standardized space of the newest data."""

    champion: str  # its version
    champion_mse: float
    challenger_mse: float
    windows: WindowRange


class Registration(Record):
    """What the register step decided for one model, and why."""

    name: str
    version: str | None  # the new version, or the one already holding this run
    registered: bool
    reason: str
    registry_path: str | None = None
    metrics: dict[str, Headline]
    decision: ChampionDecision | None = None  # gate beats-champion, when there was a champion

    @property
    def cached(self) -> bool:
        """The run was registered before: nothing to do."""
        return not self.registered and self.version is not None

    def describe(self) -> str:
        verdict = self.version if self.registered else "not registered"
        return f"{self.name}: {verdict} ({self.reason})"
