"""Distillation on Ray Train: the student learns from the ground truth and the teacher (streamed
from the Parquet cache, tasks/stream.py, or run online), and the plain-MLP baseline (same architecture,
same protocol, ground truth only) trains beside it in the same run, on the same windows.

Outputs: runs/<dataset>/<run-id>/h<S>/ with student.pt and baseline.pt (plain state dicts),
students.json (the StudentsRun record), and _SUCCESS last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import ray
import torch
from torch import nn

from timedistill.conf import Config, DistillConfig
from timedistill.conf.spans import duration
from timedistill.models import (
    Forecaster,
    MultiTeacherLoss,
    QuantileStudent,
    TimeDistillLoss,
    pinball_loss,
    reduce_feature_width,
)
from timedistill.store.record import StaleRecord, read_record, write_record
from timedistill.store.records import Cache, Dataset, Intervals, ModelSpec, StudentsRun, Teacher
from timedistill.store.registry import RegistryError, read_version
from timedistill.store.storage import SUCCESS, Storage
from timedistill.store.weights import build_forecaster, load_teacher, read_state, resolve_spec, state_bytes
from timedistill.tasks import loops
from timedistill.tasks.cache import stored_feature_dim
from timedistill.tasks.errors import StepError
from timedistill.tasks.events import Listener
from timedistill.tasks.intervals import calibrate
from timedistill.tasks.progress import relay
from timedistill.tasks.stream import CachedRows, CacheStream
from timedistill.tasks.training import Plan, TrainingJob, Worker, run_training, timestamp
from timedistill.tasks.windows import WindowBatcher, window_starts

STUDENTS_META = "students.json"


class LossOptions(TypedDict):
    """The keyword options TimeDistillLoss and MultiTeacherLoss share, from DistillConfig."""

    tau: float
    scales: int
    sup: bool
    period: bool
    scale: bool


class DistillStep(nn.Module):
    """Student plus loss (whose teacher-side projection trains with it) as one module, so that
    DDP synchronizes the projection's gradients together with the student's. A quantile student
    adds the pinball loss of its quantiles on the ground truth; the distillation terms see its
    median (its point forecast) only."""

    def __init__(self, student: Forecaster, loss: TimeDistillLoss | MultiTeacherLoss) -> None:
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, x: torch.Tensor, y: torch.Tensor, teacher_predictions: list[torch.Tensor],
                teacher_features: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pinball = None
        if isinstance(self.student, QuantileStudent):
            (prediction, feature), quantiles = self.student.quantiles(x, calibrated=False)  # [B, Q, S, C]
            pinball = pinball_loss(quantiles.float(), y, self.student.levels)
        else:
            prediction, feature = self.student(x)  # [B, S, C], [B, C, D]
        if isinstance(self.loss, MultiTeacherLoss):
            total, parts = self.loss(prediction.float(), feature.float(), teacher_predictions, teacher_features, y)
        else:
            total, parts = self.loss(prediction.float(), feature.float(), teacher_predictions[0],
                                     teacher_features[0], y)
        if pinball is not None:
            parts["pinball"] = pinball
            total = total + pinball
        return total, parts


def students_dir(run_dir: str, horizon: int) -> str:
    return f"{run_dir}/h{horizon}"


def find_students(storage: Storage, run_dir: str, horizon: int) -> StudentsRun | None:
    directory = students_dir(run_dir, horizon)
    if not storage.complete(directory):
        return None
    return read_record(storage, f"{directory}/{STUDENTS_META}", StudentsRun, directory=directory,
                                 cached=True)


def student_spec(config: Config, dataset: Dataset, horizon: int) -> ModelSpec:
    return resolve_spec("student", config.student.name, lookback=config.data.lookback, horizon=horizon,
                             n_vars=len(dataset.variables), preset=config.student.preset or config.data.name,
                             params=config.student.params, quantiles=config.student.quantiles)


def warm_base(config: Config, storage: Storage, dataset: Dataset, horizon: int) -> StudentsRun | None:
    """The run a warm start begins from (distill.warm_start): the one behind the model's
    registered LATEST version, when its student has this run's architecture, window and variables."""
    try:
        entry = read_version(storage, config.model_name(horizon))
    except RegistryError:
        return None
    try:
        found = find_students(storage, f"runs/{entry.config.dataset}/{entry.config.run_id}", horizon)
    except StaleRecord:  # a version registered by an earlier format: not a start for this one
        return None
    spec = student_spec(config, dataset, horizon).to_json()
    if found is None or found.spec("student").to_json() != spec or found.variables != dataset.variables:
        return None
    return found


def train_students(config: Config, storage: Storage, dataset: Dataset, teachers: list[Teacher],
                   caches: Sequence[Cache | None], run_dir: str, *, series: ray.ObjectRef, weights: list[float] | None,
                   base: StudentsRun | None = None, listener: Listener | None = None,
                   callbacks: Sequence[loops.Callback] = ()) -> StudentsRun:
    """Distill the student (and train the baseline) for the teachers' horizon, and store them
    (find_students first: this always trains): from scratch, or for distill.warm_epochs from the
    weights of `base`. One teacher, or several (teacher.names) combined with `weights` (None:
    learned); the first teacher is the one the record names."""
    distill, horizon, teacher = config.distill, teachers[0].horizon, teachers[0]
    present = [cache for cache in caches if cache is not None]
    if distill.use_cache and len(present) < len(caches):
        raise StepError("distill.use_cache is set but a teacher cache is missing")
    spec = student_spec(config, dataset, horizon)
    epochs = distill.warm_epochs if base else distill.epochs
    init: dict[str, dict[str, torch.Tensor]] = (
        {role: read_state(storage, base.weights_path(role)) for role in base.models} if base else {})
    # the caches' layout, checked against the student's shapes and the memory budget before any
    # worker starts; each worker then streams its rows (tasks/stream.py)
    for cache in present if distill.use_cache else []:
        window, expected = (cache.lookback, cache.horizon, cache.n_vars), (spec.lookback, spec.horizon, spec.n_vars)
        if window != expected:
            raise StepError(f"teacher cache {storage.uri(cache.directory)} holds (lookback, horizon, variables) "
                            f"{window}, but the student needs {expected}")
    stream = CacheStream.plan(storage, present, "train", budget_mb=distill.memory_budget_mb,
                              batch_size=distill.batch_size, seed=distill.seed) if distill.use_cache else None
    with relay(listener, stage="distill", horizon=horizon, epochs=epochs) as progress:
        job = StudentsJob(model=spec, settings=distill, epochs=epochs, series=series, splits=dataset.splits,
                          mixed_precision=config.ray.mixed_precision, init=init, callbacks=(*progress, *callbacks),
                          teachers=tuple(teachers), storage=storage, stream=stream,
                          weights=tuple(weights) if weights else None,
                          teacher_feature_dims=tuple(cache.feature_dim if cache else stored_feature_dim(t, config)
                                                     for t, cache in zip(teachers, caches, strict=True)))
        result = run_training(job, config, storage,
                              f"students-{dataset.name}-h{horizon}-{run_dir.rsplit('/', 1)[-1]}")
    report, intervals = result.report, None
    if spec.quantiles:  # the conformal correction joins the weights that are stored
        intervals = calibrated(spec, result.weights["student"], ray.get(series), dataset,
                               half_life_windows(config.student.calibration_half_life, dataset))
    directory = students_dir(run_dir, horizon)
    students = StudentsRun(
        dataset=dataset.name, data_fingerprint=dataset.fingerprint, lookback=spec.lookback, horizon=horizon,
        n_vars=spec.n_vars, teacher_dir=teacher.directory, teacher_name="+".join(t.name for t in teachers),
        teacher_dirs=[t.directory for t in teachers] if len(teachers) > 1 else None,
        teacher_weights=weights if len(teachers) > 1 else None,
        cache_dir=caches[0].directory if caches[0] else None, use_cache=distill.use_cache,
        teacher_forward_batches=report.teacher_forward_batches, device=report.device,
        resumed_from=report.resumed_from, worker_nodes=report.worker_nodes, peak_memory_mb=report.peak_memory_mb,
        start_memory_mb=report.start_memory_mb,
        distill=distill.model_dump(mode="json"), models=report.models, intervals=intervals, ray_run=result.ray_run,
        variables=dataset.variables, started=result.started, created=timestamp(),
        warm_from=base.directory if base else None, directory=directory)
    with storage.publish_dir(directory) as staging:
        for role in students.models:
            storage.write_bytes(f"{staging}/{role}.pt", state_bytes(result.weights[role]))  # the forecaster alone
        write_record(storage, f"{staging}/{STUDENTS_META}", students)
        storage.write_bytes(f"{staging}/{SUCCESS}", b"")
    return students


def calibrated(spec: ModelSpec, weights: dict[str, torch.Tensor], series: np.ndarray, dataset: Dataset,
               half_life: float | None) -> Intervals:
    """Calibrate a quantile student's intervals on the validation split (tasks/intervals.py), in
    place in `weights`, and score them on the test split."""
    model = build_forecaster(spec)
    if not isinstance(model, QuantileStudent):
        raise ValueError(f"only a student with quantiles has intervals to calibrate; {spec.name} has none")
    model.load_state_dict(weights)
    batcher = WindowBatcher(series, spec.lookback, spec.horizon)
    starts = {split: window_starts(dataset.splits[split], spec.lookback, spec.horizon) for split in ("val", "test")}
    intervals = calibrate(model, batcher, starts["val"], starts["test"], half_life)
    weights["widen"] = model.widen.detach().clone()
    return intervals


def half_life_windows(half_life: int | str | None, dataset: Dataset) -> float | None:
    """student.calibration_half_life in windows, which start one step apart."""
    if half_life is None or isinstance(half_life, int):
        return half_life
    return duration(half_life) / duration(dataset.step)


@dataclass(frozen=True, kw_only=True)
class StudentsJob(TrainingJob):
    """The distilled student (TimeDistill loss) and the plain baseline (MSE), from the same
    initial weights, on the same batches."""

    settings: DistillConfig
    teachers: tuple[Teacher, ...]  # run online when distill.use_cache is off
    storage: Storage  # where the teachers' weights are
    stream: CacheStream | None  # the teachers' cached outputs (None: the teachers run online)
    teacher_feature_dims: tuple[int, ...]  # the width of each teacher's features the loss projects from
    weights: tuple[float, ...] | None  # several teachers: how their predictions combine (None: learned)

    def setup(self, worker: Worker) -> Plan:
        settings, device = self.settings, worker.device
        train_starts = worker.starts["train"]

        # 1. this worker's batches, with the teachers' outputs from the caches or from the teachers
        teacher_models, forward_batches = [], 0
        epoch_batches: Callable[[int], loops.EpochBatches]

        def with_windows(window_ids: np.ndarray) -> loops.Batch:
            x, y = worker.batcher(train_starts[window_ids])
            return loops.Batch(x.to(device), y.to(device))

        if self.stream is not None:
            stream = self.stream

            def cached_batch(rows: CachedRows) -> loops.Batch:  # float16 rows -> new float32 tensors on the device
                batch = with_windows(rows.window_id)
                for outputs in rows.teachers:
                    batch.teacher_predictions.append(torch.from_numpy(outputs.prediction).to(device).float())
                    batch.teacher_features.append(torch.from_numpy(outputs.feature).to(device).float())
                return batch

            def cached_epoch(epoch: int) -> loops.EpochBatches:
                return loops.EpochBatches(stream.steps(epoch, worker.world),
                                          map(cached_batch, stream.epoch(epoch, worker.rank, worker.world)))

            epoch_batches = cached_epoch
        else:
            teacher_models = [load_teacher(self.storage, teacher, device) for teacher in self.teachers]

            def online_batch(positions: np.ndarray) -> loops.Batch:  # inference-mode tensors cannot enter autograd
                nonlocal forward_batches
                batch = with_windows(positions)
                for model, dim in zip(teacher_models, self.teacher_feature_dims, strict=True):
                    with torch.inference_mode():
                        prediction, feature = model(batch.x)
                    forward_batches += 1
                    batch.teacher_predictions.append(prediction.float().clone())
                    batch.teacher_features.append(reduce_feature_width(feature, dim).float().clone())
                return batch

            epoch_batches = loops.sharded_epochs(len(train_starts), worker.rank, worker.world, settings.seed,
                                                 settings.batch_size, online_batch)

        # 2. the trainees: the distilled student, and the baseline from the same initial weights
        def build(spec: ModelSpec) -> Forecaster:
            torch.manual_seed(settings.seed)
            return build_forecaster(spec)

        student = build(self.model)
        options = LossOptions(tau=settings.tau, scales=settings.scales, sup=settings.sup, period=settings.period,
                              scale=settings.multiscale)
        loss: TimeDistillLoss | MultiTeacherLoss
        if len(self.teachers) == 1:
            loss = TimeDistillLoss(self.teacher_feature_dims[0], student.feature_dim, settings.alpha, settings.beta,
                                   **options)
        else:
            loss = MultiTeacherLoss(list(self.teacher_feature_dims), student.feature_dim, settings.alpha,
                                    settings.beta, weights=list(self.weights) if self.weights else None, **options)
        step_module = loops.prepare(DistillStep(student, loss))  # Ray: device + DDP

        def distill_loss(batch: loops.Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return step_module(batch.x, batch.y, batch.teacher_predictions, batch.teacher_features)

        trainees = [self.trainee("student", step_module, loops.unwrap(step_module, DistillStep).student, distill_loss)]
        if settings.baseline:
            baseline_module = loops.prepare(build(self.spec_of("baseline")))

            def plain_loss(batch: loops.Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                prediction = baseline_module(batch.x).prediction.float()
                return torch.nn.functional.mse_loss(prediction, batch.y), {}

            trainees.append(self.trainee("baseline", baseline_module, loops.unwrap(baseline_module, Forecaster),
                                         plain_loss))
        # 3. early stopping (in the loop) watches the validation MSE against the ground truth only
        return Plan(trainees=trainees, epoch_batches=epoch_batches, forward_batches=lambda: forward_batches)

    def spec_of(self, trainee: str) -> ModelSpec:
        """The baseline forecasts the point alone, whatever the student's quantiles."""
        return self.model.point() if trainee == "baseline" else self.model

    def trainee(self, name: str, module: nn.Module, model: Forecaster, loss_fn: loops.LossFn) -> loops.Trainee:
        # the optimizer covers the whole module: for the student, that includes the projection
        settings = self.settings
        return loops.Trainee(
            name=name, module=module, model=model, loss_fn=loss_fn,
            optimizer=torch.optim.Adam(module.parameters(), lr=settings.lr), lr=settings.lr, decay=0.5,
            hold_epochs=settings.lr_hold_epochs, early=loops.EarlyStopping(settings.patience))
