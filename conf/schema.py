"""The configuration schema: one frozen object validated from YAML plus `--set` overrides.

Every field has a default, so an empty file is a valid (ETTh1-shaped) config; unknown keys are
errors that name the key and the file, because a typo silently falling back to a default is the
most expensive kind of config bug in a training pipeline.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from timedistill.conf.spans import steps_or_duration
from timedistill.conf.uris import REDACTED, TABLE_NAME, dataset_name, is_database, redact

PLAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
AUTO = "auto"  # teacher.name: choose among teacher.candidates by validation MSE
# The format of every artifact this version writes. It enters every key (data fingerprints, teacher,
# cache and run keys) and every record file says it (store/record.py): artifacts of another format
# are never taken for this one's, and an upgrade that changes what a key covers bumps it once.
FORMAT = 2
class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def key_payload(self) -> dict[str, Any]:
        """The section as it enters the keys of the artifacts it shapes (with FORMAT beside it)."""
        return self.model_dump(mode="json")


SOURCE_KEYS = ("path", "query", "watermark", "watermark_overlap")  # where the data comes from (DataConfig)


class DataConfig(Section):
    """The series: where it is, how to read it, how to split it, and the window of a forecast."""

    # a long file's ids may be numbers: `target: 7` names the variable "7"
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    # the dataset's name, in storage paths and model names (<name>-<horizon>); unset: the file's
    # name (data/My Load.csv is my-load), a database table's (data.query), a lake folder's
    name: str = "etth1"
    # the series: CSV (plain or gzip) or Parquet; a local path (relative to the config's folder,
    # then the working directory) or a URI (s3://, gs://, file://). Or a lake: a folder or glob of
    # Parquet files, hive-partitioned (date=2026-12-01/part-0.parquet), local or s3://. Or a
    # PostgreSQL database, postgresql://user@host:port/db, read with data.query; its password
    # comes from libpq's PGPASSWORD or ~/.pgpass, and is shown as *** wherever the path is
    # (docs/database-and-lake.md)
    path: str = "../data/ETTh1.csv"
    # a database's rows: a table name (schema.table) or a SELECT; only with a postgresql:// path
    query: str | None = None
    # a database's or a lake's time column by which each run pulls only the rows after the stored
    # series' end, appended as a new version (the newest stored steps are read again and must be
    # unchanged); unset: the whole source every run
    watermark: str | None = None
    watermark_overlap: int = Field(48, gt=0)  # data.watermark: the stored steps read again and compared
    # the time column; unset: the one column of a date type, or of text that reads as dates (a name
    # such as ds, date or timestamp settles a tie)
    timestamp: str | None = None
    timestamp_format: str | None = None  # strftime format of the times (%d.%m.%Y %H:%M); unset: inferred
    # a variable kept last, the forecasting literature's convention for its target (OT in the ETT
    # configs); unset: the file's order. Every variable is forecast either way.
    target: str | None = None
    columns: list[str] | None = None  # variables to keep, in this order; unset: every column
    # wide: a column per variable; long: one row per (id, time, value), one variable per id; auto:
    # long when the file has an id and a value column (unique_id and y, id and value, or the
    # configured ones), else wide
    format: Literal["auto", "wide", "long"] = "auto"
    id_column: str | None = None  # format long: the column naming the series; unset: unique_id or id
    value_column: str | None = None  # format long: the column holding the value; unset: y or value
    # format long, ids on different times: keep the times every id has (inner), or all of them
    # (outer; data.missing fills the holes)
    align: Literal["inner", "outer"] = "inner"
    max_series: int = Field(1000, gt=0)  # format long: more ids than this is an error
    # ratio: train/val/test by `ratios`, oldest first; rolling: the newest rows validate and test
    # (val_size, test_size); ett-hour, ett-minute: the ETT benchmark's 12/4/4 months
    split: Literal["ett-hour", "ett-minute", "ratio", "rolling"] = "ratio"
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train / val / test for split ratio
    # split rolling: the newest rows the validation split takes, before the test split; a count of
    # steps, or a duration (14d, 36h, 90min)
    val_size: int | str | None = None
    test_size: int | str | None = None  # split rolling: the newest rows the test split takes
    # split rolling: train on the last this many rows before validation; unset: on all of them
    train_size: int | str | None = None
    # append-only: new data may only add rows after the previous version's (a changed or shorter
    # history is an error); any: a new file is a new truth
    history: Literal["any", "append-only"] = "any"
    lookback: int = Field(720, gt=0)  # rows of history a forecast reads
    horizons: list[int] = [96, 192, 336, 720]  # steps forecast: a teacher, a student and a model each
    # gaps in the time index, NaN and empty cells: error names the first one; ffill carries the
    # last value forward; interpolate draws a line between the values around it
    missing: Literal["error", "ffill", "interpolate"] = "error"
    duplicates: Literal["error", "drop"] = "error"  # drop: remove rows identical to the one before
    # keep only the first this many time steps (quick looks); ingest says how many it kept of how
    # many. Training only: a forecast reads its whole input.
    max_rows: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _name_from_path(cls, values: Any) -> Any:
        """An unnamed dataset takes its file's name (data/my load.csv is `my-load`), or its
        table's (data.query: sales.load is `load`); the watermark is the time column."""
        if not isinstance(values, dict):
            return values
        if values.get("name") is None:
            path = str(values.get("path") or cls.model_fields["path"].get_default())
            query = values.get("query")
            table = query.rsplit(".", 1)[-1].strip('"') if isinstance(query, str) and TABLE_NAME.match(query) else None
            values = {**values, "name": dataset_name(table if is_database(path) and table else path)}
        if values.get("timestamp") is None and values.get("watermark") is not None:
            values = {**values, "timestamp": values["watermark"]}
        return values

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not PLAIN_NAME.match(value):
            raise ValueError(f"must be a plain lowercase name ([a-z0-9_-], max 64), got {value!r}")
        return value

    @field_validator("val_size", "test_size", "train_size")
    @classmethod
    def _size(cls, value: int | str | None) -> int | str | None:
        return steps_or_duration(value)

    @model_validator(mode="after")
    def _columns(self) -> DataConfig:
        names = self.columns or []
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"data.columns names {repeated} more than once")
        if self.timestamp is not None and self.timestamp in (*names, self.target):
            raise ValueError(f"data.timestamp {self.timestamp!r} is also named as a variable (data.columns or "
                             "data.target)")
        return self

    @model_validator(mode="after")
    def _source(self) -> DataConfig:
        if is_database(self.path):
            if self.query is None:
                raise ValueError(f"{redact(self.path)} is a database: data.query names its rows (a table, or a SELECT)")
            if not (TABLE_NAME.match(self.query) or re.match(r"(?is)^\s*(select|with)\b", self.query)):
                raise ValueError("data.query must be a table name (schema.table) or a SELECT, got "
                                 f"{self.query[:80]!r}")
        elif self.query is not None:
            raise ValueError("data.query reads a database; data.path is not one (postgresql://user@host:port/db)")
        if self.watermark is not None:
            if self.timestamp != self.watermark:
                raise ValueError(f"data.watermark {self.watermark!r} must be the time column (data.timestamp is "
                                 f"{self.timestamp!r})")
            if self.max_rows is not None:
                raise ValueError("data.max_rows keeps the oldest rows, data.watermark adds the newest: set one")
        return self

    @model_validator(mode="after")
    def _rolling_sizes(self) -> DataConfig:
        if self.split == "rolling" and (self.val_size is None or self.test_size is None):
            raise ValueError("split 'rolling' needs data.val_size and data.test_size (steps, or a duration: 14d)")
        return self

    def key_payload(self) -> dict[str, Any]:
        """What the series is, not where it comes from: the data's fingerprint covers what was read."""
        return {key: value for key, value in super().key_payload().items() if key not in SOURCE_KEYS}

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, value: list[int]) -> list[int]:
        if not value or any(h <= 0 for h in value) or len(set(value)) != len(value):
            raise ValueError(f"must be a non-empty list of distinct positive integers, got {value}")
        return value

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r <= 0 for r in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"must be three positive fractions that sum to 1, got {list(value)}")
        return value


class TeacherConfig(Section):
    """The big forecaster (or forecasters) the student learns from."""

    # a teacher of models/ (itransformer, patchtst, moderntcn, timemixer, dlinear), or auto: train
    # every one of `candidates` and keep, per horizon, the one with the lowest validation MSE
    name: str = "itransformer"
    candidates: list[str] = []  # with name auto: the teachers to choose from (two or more)
    # several teachers for one student: each trained (or reused by its own key, as if named alone)
    # and cached; distill.teacher_weighting combines them. `name` is not read then.
    names: list[str] = []
    preset: str | None = None  # the model file's hyperparameters for a dataset; unset: data.name's
    params: dict[str, Any] = {}  # hyperparameters that override the preset (d_model, e_layers, ...)
    epochs: int = Field(10, gt=0)  # at most this many; early stopping may end sooner
    lr: float = Field(1e-4, gt=0)  # Adam's learning rate
    lr_decay: float = Field(0.5, gt=0, le=1)  # multiply the lr by this after every epoch
    batch_size: int = Field(32, gt=0)  # windows per batch, per worker
    patience: int = Field(3, gt=0)  # epochs without a better validation MSE before it stops
    seed: int = 2021  # of the weights' initialization and the batches' order
    # always: train anew every run; if-data-changed: reuse the teacher trained on the same data
    # and settings; warm: like if-data-changed, but new data fine-tunes the latest teacher of the
    # same architecture and window for warm_epochs instead of training from scratch
    refresh: Literal["always", "if-data-changed", "warm"] = "if-data-changed"
    warm_epochs: int = Field(3, gt=0)  # refresh warm: the epochs a fine-tune trains

    @model_validator(mode="after")
    def _names(self) -> TeacherConfig:
        if not self.names:
            return self
        if len(self.names) < 2 or AUTO in self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"teacher.names must list two or more distinct teachers, got {self.names}")
        if self.name == AUTO:
            raise ValueError(f"teacher.names and teacher.name: {AUTO} do not go together: distill from several "
                             "teachers, or choose one")
        if self.params:
            raise ValueError("teacher.params cannot apply to every teacher of teacher.names; each takes its preset "
                             "(teacher.preset)")
        return self

    @model_validator(mode="after")
    def _candidates(self) -> TeacherConfig:
        if self.name != AUTO:
            if self.candidates:
                raise ValueError(f"teacher.candidates is only read with teacher.name: {AUTO} (the name is "
                                 f"{self.name!r})")
            return self
        if len(self.candidates) < 2:
            raise ValueError(f"teacher.name: {AUTO} needs teacher.candidates, two or more teachers to choose from")
        if AUTO in self.candidates or len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"teacher.candidates must name distinct teachers, got {self.candidates}")
        if self.params:
            raise ValueError(f"teacher.params cannot apply to every candidate of teacher.name: {AUTO}; each "
                             "candidate takes its preset (teacher.preset)")
        return self

    def members(self) -> list[str]:
        """The teachers a run trains: several (names), the candidates of auto, or the one named."""
        return self.names or (self.candidates if self.name == AUTO else [self.name])

    def alone(self, name: str) -> TeacherConfig:
        """The section one of several teachers trains with (teacher.names, or a candidate of
        auto): the same as naming it alone, so that a teacher is reused across such runs."""
        return self.model_copy(update={"name": name, "candidates": [], "names": []})


class StudentConfig(Section):
    """The small forecaster that is distilled and served."""

    name: str = "mlp"  # a student of models/: mlp (the paper's), tsmixer, lightts
    preset: str | None = None  # the model file's hyperparameters for a dataset; unset: data.name's
    params: dict[str, Any] = {}  # hyperparameters that override the preset (d_model, norm, ...)
    # quantile levels, e.g. [0.1, 0.5, 0.9]: the student also forecasts these (pinball loss on the
    # ground truth; the distillation terms act on the median), each central interval calibrated
    # on the validation split; [] forecasts the point alone
    quantiles: list[float] = []
    # the intervals' calibration weighs each validation window by its age: the weight halves every
    # this many steps, or this long (a duration: 7d); unset: every window alike
    calibration_half_life: int | str | None = "7d"

    @field_validator("calibration_half_life")
    @classmethod
    def _half_life(cls, value: int | str | None) -> int | str | None:
        return steps_or_duration(value)

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, value: list[float]) -> list[float]:
        if not value:
            return value
        if any(not 0 < level < 1 for level in value):
            raise ValueError(f"levels must lie strictly between 0 and 1, got {value}")
        if value != sorted(set(value)):
            raise ValueError(f"levels must be sorted and distinct, got {value}")
        if 0.5 not in value or any(abs(a + b - 1) > 1e-9 for a, b in zip(value, reversed(value), strict=True)):
            raise ValueError(f"levels must include 0.5 and be symmetric around it, as in [0.1, 0.5, 0.9]; got {value}")
        return value


class DistillConfig(Section):
    """How the student learns from the teacher (the TimeDistill loss, docs/method.md) and the
    plain MLP baseline beside it."""

    alpha: float = Field(1.0, ge=0)  # weight of the prediction-level terms
    beta: float = Field(1.0, ge=0)  # weight of the feature-level terms
    tau: float = Field(0.5, gt=0)  # softmax temperature of the period terms
    scales: int = Field(3, ge=0)  # rounds of width-2 average pooling in the scale terms
    sup: bool = True  # keep the ground-truth term (false: the paper's "w/o sup" ablation)
    period: bool = True  # the multi-period terms (ablation switch)
    multiscale: bool = True  # the multi-scale terms (ablation switch)
    lr: float = Field(0.01, gt=0)  # Adam's learning rate, for the student and the baseline alike
    lr_hold_epochs: int = Field(2, ge=0)  # keep the lr this many epochs, then halve it every epoch
    epochs: int = Field(10, gt=0)  # at most this many; early stopping may end sooner
    patience: int = Field(5, gt=0)  # epochs without a better validation MSE before it stops
    batch_size: int = Field(32, gt=0)  # windows per batch, per worker
    seed: int = 2021  # of the weights' initialization and the batches' order
    baseline: bool = True  # also train the plain student on the ground truth alone
    use_cache: bool = True  # read the teacher from the Parquet cache (false: run it online)
    # teacher.names: how the teachers' predictions are combined into one target. val-softmax:
    # weights softmax(-10 * val MSE / best val MSE) (a teacher 10% worse weighs e^-1 as much);
    # uniform; learned: trained with the student from equal weights
    teacher_weighting: Literal["val-softmax", "uniform", "learned"] = "val-softmax"
    feature_max_dim: int = Field(1024, gt=0)  # teacher features wider than this are pooled down
    # cached teacher rows a training worker holds at most (tasks/stream.py): a cache split that
    # fits is read once and kept, a larger one is streamed row group by row group every epoch
    memory_budget_mb: float = Field(1024, gt=0)
    # start the student and the baseline from the run behind the model's registered LATEST
    # version (same architecture and window), for warm_epochs, instead of from scratch
    warm_start: bool = False
    warm_epochs: int = Field(3, gt=0)  # warm_start: the epochs a fine-tune trains


class RayConfig(Section):
    """Where training runs and with what (docs/cluster.md)."""

    # a Ray cluster's address; unset: $RAY_ADDRESS if set, else a local Ray started on demand
    address: str | None = None
    # data-parallel training workers; unset picks for you (tasks/runtime.py, `Workers`): a local
    # Ray gets one worker with every CPU (one per GPU when it has GPUs), a cluster one worker with
    # one CPU unless the config says more
    num_workers: int | None = Field(None, ge=1)
    use_gpu: bool | None = None  # unset: the GPUs of a local Ray, none on a cluster
    cpus_per_worker: float | None = Field(None, gt=0)  # unset: see num_workers
    gpus_per_worker: float = Field(1.0, ge=0)  # with use_gpu
    mixed_precision: bool = False  # bfloat16 autocast on GPU workers
    max_failures: int = Field(2, ge=0)  # worker failures a training run survives
    # horizons whose teachers (then students) train at once; unset: as many as the cluster's free
    # resources fit (one on a local Ray, whose run has every CPU unless cpus_per_worker is set)
    parallel_runs: int | None = Field(None, ge=1)


class StorageConfig(Section):
    """Where every artifact goes (docs/architecture.md has the layout)."""

    root: str = "./artifacts"  # local path or URI (s3://bucket/prefix, gs://...)
    endpoint_override: str | None = None  # S3-compatible endpoint, e.g. http://127.0.0.1:9000


class RegistryConfig(Section):
    """Which students are registered, under which name (what serving serves)."""

    model_name: str | None = None  # unset: <dataset>-<horizon>
    # always; beats-baseline: the student's test MSE below the plain MLP's; beats-champion: the new
    # student and the registered LATEST are scored on the same newest windows (the new validation
    # split), and the new one must be better by `margin`
    gate: Literal["always", "beats-baseline", "beats-champion"] = "beats-baseline"
    margin: float = Field(0.0, ge=0, lt=1)  # relative MSE improvement needed by beats-champion

    @field_validator("gate", mode="before")
    @classmethod
    def _gate(cls, value: Any) -> Any:
        if value == "beats-previous":
            raise ValueError("'beats-previous' compared test scores of different windows and is gone: use "
                             "'beats-champion', which scores both models on the same newest windows")
        return value


class MonitorConfig(Section):
    """The drift check of `timedistill monitor` (docs/cluster.md, the daily loop)."""

    threshold: float = Field(1.3, gt=1)  # drift: recent MSE / MSE at registration above this
    min_windows: int = Field(1, gt=0)  # fewer windows with new truth: no verdict (drift null)


class ServeConfig(Section):
    """`timedistill serve`: where the HTTP API listens and how Ray Serve runs it (docs/serving.md)."""

    host: str = "127.0.0.1"  # the API's address; 0.0.0.0 opens it to the network
    port: int = Field(8000, gt=0, lt=65536)  # the API's port
    # what answers HTTP in front of the replicas when `timedistill serve` starts Ray
    # (serving/ingress.py): proxy, Ray Serve's Python proxy; haproxy, Ray Serve's high-throughput
    # mode (HAProxy, and gRPC between replicas); auto, HAProxy where its binary is installed
    # (ray[serve] on Linux), else the proxy. A Ray cluster keeps the mode it was started with.
    ingress: Literal["auto", "proxy", "haproxy"] = "auto"
    # HAProxy's stats page on 127.0.0.1, in HAProxy mode with a Ray that `timedistill serve`
    # starts; unset: a free port, chosen at start and named in the start-up line (so that several
    # servers share a machine)
    haproxy_stats_port: int | None = Field(None, gt=0, lt=65536)
    haproxy_metrics_port: int | None = Field(None, gt=0, lt=65536)  # HAProxy's Prometheus endpoint, likewise
    num_cpus: float = Field(0.5, gt=0)  # CPUs of each replica
    # replicas each deployment keeps at least; unset: two where the Ray cluster has the CPUs for two
    # of each (losing one then costs only the requests in flight on it), else one
    min_replicas: int | None = Field(None, ge=1)
    max_replicas: int = Field(2, ge=1)  # replicas each deployment scales up to under load
    max_ongoing_requests: int = Field(32, ge=1)  # per replica; more wait in its queue
    max_queued_requests: int = Field(256, ge=1)  # beyond these, a request is a 503 with Retry-After
    max_batch_size: int = Field(16, ge=1)  # single histories one forward pass answers together
    batch_wait_timeout_s: float = Field(0.01, ge=0)  # how long a batch waits for company, when some is waiting
    max_models_per_replica: int = Field(8, ge=1)  # models a pool replica holds; the least recent is evicted
    # models each ingress replica answers itself, the most recently requested: no hop to the pool
    # for them (serving/app.py, ResidentModels); 0 sends every request to the pool
    ingress_models: int = Field(4, ge=0)
    max_body_bytes: int = Field(16 * 2**20, gt=0)  # a larger request body is a 413
    request_timeout_s: float = Field(30.0, gt=0)  # a request (a slow or stalled body included) ends by then
    reload_interval_s: float = Field(5.0, gt=0)  # how often replicas look for new LATEST versions
    access_log: bool = True  # a log line per request in each replica's Ray Serve log
    auth_token: str | None = None  # bearer token; also read from $TIMEDISTILL_SERVE_TOKEN


class Config(Section):
    """A whole config: one frozen object, every field defaulted."""

    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()
    registry: RegistryConfig = RegistryConfig()
    monitor: MonitorConfig = MonitorConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _serve_limits(self) -> Config:
        if self.serve.max_batch_size > self.serve.max_ongoing_requests:
            raise ValueError("serve.max_batch_size must not exceed serve.max_ongoing_requests")
        if (self.serve.min_replicas or 1) > self.serve.max_replicas:
            raise ValueError("serve.min_replicas must not exceed serve.max_replicas")
        ports = [port for port in (self.serve.port, self.serve.haproxy_stats_port, self.serve.haproxy_metrics_port)
                 if port is not None]
        if len(set(ports)) < len(ports):
            raise ValueError("serve.port, serve.haproxy_stats_port and serve.haproxy_metrics_port must differ")
        return self

    def public(self) -> dict[str, Any]:
        """The config as JSON, its secrets (serve.auth_token, a password in data.path) shown as
        '***': what a run folder, a registered version and `--json` keep of it."""
        dumped = self.model_dump(mode="json")
        dumped["data"]["path"] = redact(self.data.path)
        if dumped["serve"]["auth_token"] is not None:
            dumped["serve"]["auth_token"] = REDACTED
        return dumped

    def model_name(self, horizon: int) -> str:
        return self.registry.model_name or f"{self.data.name}-{horizon}"

    def run_id(self, data_fingerprint: str, salt: str | None = None) -> str:
        """Runs are keyed by what determines their results: the config (minus where things run)
        and the data they ran on, so an unchanged re-run finds its own earlier outputs; `salt`
        (teacher.refresh: always) makes every run a new one."""
        payload: dict[str, Any] = {name: getattr(self, name).key_payload()
                                   for name in ("data", "teacher", "student", "distill")}
        payload["data_fingerprint"] = data_fingerprint
        payload["format"] = FORMAT
        if salt is not None:
            payload["salt"] = salt
        return stable_hash(payload)[:12]


def stable_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
