"""What the pipeline's steps hand each other, and what serving reads: one typed record per kind of
artifact, each serializing to the JSON file it is stored as.

    Dataset        datasets/<name>/<fingerprint>/manifest.json       ingest
    Teacher        teachers/<name>/<key>/teacher.json                teacher
    TeacherChoice  in runs/.../metrics.json (teacher.name auto)      teacher
    Cache          cache/<key>/cache.json                            cache
    StudentsRun    runs/<name>/<run-id>/h<S>/students.json           distill
    ResultRow      in runs/.../metrics.json and registry/.../metrics.json   evaluate
    Registration   in runs/.../metrics.json                          register
    RegistryEntry  registry/<model>/v<k>/config.json, scaler.json, metrics.json   what serving loads
    RunSummary     runs/<name>/<run-id>/metrics.json, and `timedistill retrain --json`

Each record describes itself in one line (`describe()`) for the terminal, the logs and the report.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from torch import nn

from timedistill import models
from timedistill.conf import ConfigError
from timedistill.conf.schema import duration
from timedistill.store.contract import Card
from timedistill.store.record import Record
from timedistill.store.scaler import NamedScaler, Scaler
from timedistill.store.storage import Storage
from timedistill.store.weights import load_forecaster

Role = Literal["student", "baseline"]
ROLES: tuple[Role, ...] = ("student", "baseline")
SERIES = "series.parquet"
RUN_CONFIG = "config.yaml"  # runs/<name>/<run-id>/config.yaml: the whole config a run used
TEACHER_WEIGHTS = "teacher.pt"
_WINDOW = ("lookback", "horizon", "n_vars")


# ---- models -----------------------------------------------------------------------------------
class ModelSpec(Record):
    """How to build a forecaster: its name, window and every hyperparameter (what its weights
    need to be loaded into)."""

    name: str
    lookback: int
    horizon: int
    n_vars: int
    hparams: dict[str, Any] = Field(default_factory=dict)
    quantiles: list[float] = Field(default_factory=list, exclude_if=lambda levels: not levels)  # [] the point alone

    @classmethod
    def resolve(cls, section: str, name: str, *, lookback: int, horizon: int, n_vars: int, preset: str | None,
                params: dict[str, Any], quantiles: list[float] | None = None) -> ModelSpec:
        """The spec as it will be built (the model file's preset, then the config's params),
        validated here in the driver so that a bad value fails, naming the config section,
        before any worker starts."""
        try:
            built = models.build_config(name, lookback=lookback, horizon=horizon, n_vars=n_vars, preset=preset,
                                        **params)
        except ValueError as exc:
            raise ConfigError(f"{section}: {exc}") from None
        hparams = {k: v for k, v in dataclasses.asdict(built).items() if k not in _WINDOW}
        return cls(name=name, lookback=lookback, horizon=horizon, n_vars=n_vars, hparams=hparams,
                   quantiles=quantiles or [])

    def build(self) -> nn.Module:
        """The forecaster, untrained (the point model first, so that a seed gives it the same
        weights with or without quantiles)."""
        model = models.build_model(self.name, lookback=self.lookback, horizon=self.horizon, n_vars=self.n_vars,
                                   **self.hparams)
        return models.QuantileStudent(model, self.quantiles) if self.quantiles else model

    def point(self) -> ModelSpec:
        """The same model without quantile outputs (the baseline of a quantile student)."""
        return self.model_copy(update={"quantiles": []})

    def describe(self) -> str:
        return f"{self.name} (lookback {self.lookback}, horizon {self.horizon}, {self.n_vars} variables)"


class Headline(Record):
    """The scores a model is compared by: what the registry, the server and the flow show."""

    test_mse: float
    test_mae: float
    params: int
    latency_ms: float | None  # median forward pass of a batch (ResultRow says which batch and threads)


class ModelScore(Headline):
    """One model's line in a comparison."""

    name: str
    val_mse: float
    epochs: int

    def headline(self) -> Headline:
        return Headline.model_validate(self.model_dump())


class TrainedModel(Record):
    """A forecaster trained on Ray Train: what it is and how it scored."""

    name: str
    hparams: dict[str, Any]
    quantiles: list[float] = Field(default_factory=list, exclude_if=lambda levels: not levels)  # student.quantiles
    params: int
    val_mse: float  # the best epoch's, on the whole validation split
    best_epoch: int  # 1-based; its weights are the ones kept
    epochs: int  # epochs run (early stopping may end before the configured number)
    test_mse: float
    test_mae: float
    latency_ms: float | None  # None since 2026-12: the evaluate step times each model (ResultRow)
    history: list[dict[str, int | float]]  # per epoch: train loss (and its parts), val MSE/MAE, lr, seconds

    def score(self) -> ModelScore:
        return ModelScore.model_validate(self.model_dump(exclude={"hparams", "history", "quantiles"}))


class TrainingRun(Record):
    """What every Ray Train run records: the data and window it trained on, and where it ran."""

    dataset: str
    data_fingerprint: str
    lookback: int
    horizon: int
    n_vars: int
    device: str
    resumed_from: int  # the epoch the last attempt started from: 0 unless a checkpoint was restored
    worker_nodes: list[str]  # the Ray node of every rank
    peak_memory_mb: list[float]  # of every rank
    ray_run: str  # Ray Train's run folder (its checkpoints)
    # (none in files written before these were recorded)
    variables: list[str] | None = None
    started: str | None = None  # when its training began (horizons in parallel overlap)
    created: str | None = None  # when it finished
    warm_from: str | None = None  # the folder of the weights it started from (a warm start); None: from scratch
    # of every rank, before the job's setup (Ray, torch, the worker): the run added peak - start
    start_memory_mb: list[float] | None = None

    def same_shape(self, other: TrainingRun) -> bool:
        """Same window and variables: the weights of one can start the other."""
        return ((self.lookback, self.horizon, self.n_vars) == (other.lookback, other.horizon, other.n_vars)
                and None not in (self.variables, other.variables) and self.variables == other.variables)


# ---- the pipeline's records -------------------------------------------------------------------
class Missing(Record):
    """What ingestion filled or dropped, and under which policy."""

    policy: str
    duplicates_dropped: int
    gaps: int
    rows_inserted: int
    values_filled: int


class Lineage(Record):
    """How an ingested version relates to the one ingested before it (none for the first)."""

    previous: str | None = None  # the fingerprint of the version ingested before
    appended_rows: int | None = None  # rows after the previous version's last timestamp
    history_changed: bool | None = None  # a value, a row or a variable of the previous range differs
    first_changed: str | None = None  # the first timestamp that differs


class RowCut(Record):
    """Rows of the source that ingestion did not keep, and the setting that removed them."""

    setting: str  # data.max_rows, data.align (ids on different times), data.duplicates
    rows: int

    def describe(self) -> str:
        return f"{self.setting} removed {self.rows:,}"


class Dataset(Lineage):
    """An ingested series: its manifest (manifest.json) and where it lives in storage."""

    name: str = Field(alias="dataset")
    fingerprint: str
    source: str
    source_sha256: str
    rows: int  # stored: the rows kept, and those inserted into gaps
    source_rows: int  # time steps of the source, before any setting removed some
    cuts: list[RowCut] = Field(default_factory=list)  # what removed the others
    variables: list[str]  # in the file's order (data.target, when set, last)
    target: str | None
    timestamp: str  # the time column
    format: Literal["wide", "long"] = "wide"  # as the file was read
    id_column: str | None = None  # format long: the columns of the ids and the values
    value_column: str | None = None
    found: str | None = None  # what was read off the file rather than set: the time column, the layout
    ignored_columns: list[str] = Field(default_factory=list)  # columns of the file that were not read
    step: str
    start: str
    end: str
    splits: dict[str, tuple[int, int]]  # split -> rows [start, end)
    scaler: Scaler
    missing: Missing
    settings: dict[str, Any]  # the data settings the fingerprint covers
    created: str
    directory: str = Field(exclude=True)  # relative to the storage root
    cached: bool = Field(False, exclude=True)  # an identical earlier ingestion was reused

    @property
    def series_path(self) -> str:
        return f"{self.directory}/{SERIES}"

    def values(self, storage: Storage) -> np.ndarray:
        """The whole series in data units: [T, C] float64."""
        table = storage.read_parquet(self.series_path, columns=self.variables)
        return np.column_stack([table.column(name).to_numpy() for name in self.variables]).astype(np.float64)

    def timestamps(self, storage: Storage) -> np.ndarray:
        """The time of every row: [T] datetime64[us]."""
        return storage.read_parquet(self.series_path, columns=[self.timestamp]).column(0).to_numpy()

    def standardized(self, storage: Storage) -> np.ndarray:
        """The whole series, standardized with the train-split scaler: [T, C] float32."""
        return self.scaler.standardize(self.values(storage))

    @model_validator(mode="before")
    @classmethod
    def _source_rows(cls, values: Any) -> Any:
        """Manifests written before rows were counted kept every row of their source."""
        if isinstance(values, dict) and "source_rows" not in values and "rows" in values:
            return {**values, "source_rows": values["rows"]}
        return values

    @property
    def kept_rows(self) -> int:
        return self.source_rows - sum(cut.rows for cut in self.cuts)

    def kept(self) -> str:
        """'800 of 17,420 rows kept (data.max_rows removed 16,620)', or '' when all were."""
        if not self.cuts:
            return ""
        return f"{self.kept_rows:,} of {self.source_rows:,} rows kept ({', '.join(c.describe() for c in self.cuts)})"

    def describe(self) -> str:
        kept = f" ({self.kept()})" if self.cuts else ""
        return f"{self.name}: {self.rows} rows x {len(self.variables)} variables{kept}, {self.fingerprint}"


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

    def load(self, storage: Storage, device: str = "cpu") -> nn.Module:
        """The frozen teacher in eval mode."""
        model = load_forecaster(storage, self.weights_path, self.spec, device)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model

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


class Cache(Record):
    """The teacher's predictions and features over every window, in Parquet (cache.json)."""

    key: str
    teacher_dir: str = Field(alias="teacher")  # the teacher's folder
    teacher_sha256: str
    data_fingerprint: str
    lookback: int
    horizon: int
    n_vars: int
    feature_dim: int  # stored width (the teacher's, or distill.feature_max_dim if narrower)
    teacher_feature_dim: int
    dtype: str
    rows: dict[str, int]  # split -> windows
    bytes: int
    teacher_forward_batches: int  # batches the teacher ran to build it
    seconds: float
    directory: str = Field(exclude=True)
    cached: bool = Field(False, exclude=True)  # a valid cache was found: the teacher did not run

    def split_dir(self, split: str) -> str:
        return f"{self.directory}/{split}"

    @property
    def forward_batches_run(self) -> int:
        """Teacher batches this use of the cache cost: none when it was reused."""
        return 0 if self.cached else self.teacher_forward_batches

    def describe(self) -> str:
        return f"h={self.horizon} {sum(self.rows.values()):,} windows, {self.bytes / 2**20:.1f} MiB"


class HorizonCaches(Record):
    """The caches of one horizon's source teachers (HorizonTeachers.sources, in their order)."""

    horizon: int
    caches: list[Cache]

    @property
    def cached(self) -> bool:
        """Every cache was found: no teacher ran."""
        return all(cache.cached for cache in self.caches)

    def describe(self) -> str:
        return "; ".join(cache.describe() for cache in self.caches)


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

    def load(self, storage: Storage, role: Role, device: str = "cpu") -> nn.Module:
        return load_forecaster(storage, self.weights_path(role), self.spec(role), device)

    def describe(self) -> str:
        baseline = f", MLP {self.baseline.test_mse:.4f}" if self.baseline else ""
        warm = ", warm start" if self.warm_from else ""
        return (f"h={self.horizon} {self.student.name}: {training(self.student.history)}{warm}; test MSE "
                f"{self.student.test_mse:.4f}{baseline}")


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
    latency_threads: int | None = None  # with this many torch threads (None in rows written before)
    intervals: Intervals | None = None  # the student's, with student.quantiles
    teachers: list[ModelScore] | None = None  # teacher.names: every teacher (`teacher`: the best of them)

    @classmethod
    def compare(cls, teacher: Teacher, students: StudentsRun, latency: Latency | None = None) -> ResultRow:
        """The comparison of one horizon; `latency` replaces the models' own latency fields."""
        scores = {"teacher": teacher.score(), **{role: trained.score() for role, trained in students.models.items()}}
        if latency is not None:
            scores = {role: score.model_copy(update={"latency_ms": latency.ms[role]}) for role, score in scores.items()}
        teach, student, baseline = scores["teacher"], scores["student"], scores.get("baseline")
        return cls(
            dataset=students.dataset, horizon=students.horizon, teacher=teach, student=student, baseline=baseline,
            student_vs_teacher_pct=gain(student.test_mse, teach.test_mse),
            student_vs_baseline_pct=gain(student.test_mse, baseline.test_mse) if baseline else None,
            param_ratio=teach.params / student.params,
            speedup=teach.latency_ms / student.latency_ms if teach.latency_ms and student.latency_ms else None,
            device=latency.device if latency else students.device,
            latency_batch=latency.batch if latency else None, latency_threads=latency.threads if latency else None,
            intervals=students.intervals,
        )

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


def training(history: list[dict[str, int | float]]) -> str:
    """How long the epochs themselves took: the rest of a training step is Ray Train's."""
    return f"{len(history)} epoch{'s' if len(history) != 1 else ''}, {sum(e['seconds'] for e in history):.1f}s"


def gain(value: float, reference: float) -> float:
    """Relative MSE reduction in %: positive when `value` is better (lower) than `reference`."""
    return 100.0 * (reference - value) / reference


def change(gain_pct: float | None) -> str:
    """A gain in words that cannot be read backwards: '7.4% better', '5.0% worse'."""
    if gain_pct is None:
        return ""
    if round(gain_pct, 1) == 0:
        return "the same"
    return f"{abs(gain_pct):.1f}% {'better' if gain_pct > 0 else 'worse'}"


# ---- the registry -----------------------------------------------------------------------------
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
    timestamp: str | None = None  # the data's timestamp column (not recorded before 2026-12)
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

    def load(self, storage: Storage, device: str = "cpu") -> nn.Module:
        return load_forecaster(storage, self.weights_path, self.config.spec, device)

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


class WindowRange(Record):
    """Windows scored together: how many, and the time their forecasts cover."""

    count: int
    start: str  # the first forecast step of the first window
    end: str  # the last forecast step of the last window


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


# ---- a run ------------------------------------------------------------------------------------
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


class StepTime(Record):
    cached: bool  # every part of the step (every horizon) was reused
    seconds: float


class CacheUse(Record):
    """How a run used the teacher caches (`distill --json`)."""

    hit: bool  # every horizon's cache was reused
    teacher_forward_batches: int  # what the run ran: building caches, and the teacher run online
    path: str | list[str]  # one URI per horizon
    bytes: int

    def describe(self) -> str:
        paths = self.path if isinstance(self.path, str) else ", ".join(self.path)
        return (f"teacher cache {'reused' if self.hit else 'built'}: {paths} ({self.bytes / 2**20:.1f} MiB); "
                f"teacher batches run: {self.teacher_forward_batches}")


class RunSummary(Record):
    """One run of the pipeline: runs/<name>/<run-id>/metrics.json and `retrain --json`. Written,
    never read back (the records it holds are read from their own files)."""

    dataset: str
    run_dir: str  # a URI
    run_id: str
    data_fingerprint: str
    steps: dict[str, StepTime]
    results: list[ResultRow]
    models: list[Registration]
    caches: list[Cache]
    teachers: list[Teacher]
    # teacher.name auto: per horizon, every candidate's scores and the pick
    teacher_choices: list[TeacherChoice] = Field(default_factory=list)
    teacher_sets: list[TeacherSet] = Field(default_factory=list)  # teacher.names: per horizon
    students: list[StudentsRun] = Field(exclude=True)
    config: dict[str, Any]
    root: str = Field(exclude=True)  # the storage root as a URI

    def uri(self, path: str) -> str:
        return f"{self.root}/{path}"

    def cache_use(self) -> CacheUse:
        online = sum(run.teacher_forward_batches for run in self.students if not run.cached)
        paths = [self.uri(cache.directory) for cache in self.caches]
        return CacheUse(hit=bool(self.caches) and all(cache.cached for cache in self.caches),
                        teacher_forward_batches=sum(cache.forward_batches_run for cache in self.caches) + online,
                        path=paths[0] if len(paths) == 1 else paths, bytes=sum(cache.bytes for cache in self.caches))

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "run_dir": self.run_dir, "run_id": self.run_id,
            "data_fingerprint": self.data_fingerprint,
            "steps": {name: step.to_json() for name, step in self.steps.items()},
            "results": [row.to_json() for row in self.results],
            "models": [registration.to_json() for registration in self.models],
            "cache": [cache.to_json() | {"hit": cache.cached, "path": self.uri(cache.directory)}
                      for cache in self.caches],
            "teachers": [teacher.model_dump(mode="json", exclude={"history"}) | {"cached": teacher.cached}
                         for teacher in self.teachers],
            **({"teacher_choices": [choice.to_json() for choice in self.teacher_choices]}
               if self.teacher_choices else {}),
            **({"teacher_sets": [ensemble.to_json() for ensemble in self.teacher_sets]} if self.teacher_sets else {}),
            "config": self.config,
        }

    def describe(self) -> str:
        return f"{self.dataset} run {self.run_id}: {len(self.results)} horizon(s), {self.run_dir}"
