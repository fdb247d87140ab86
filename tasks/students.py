"""Distillation on Ray Train: the student learns from the ground truth and the teacher (read from
the Parquet cache with Ray Data, or run online), and the plain-MLP baseline (same architecture,
same protocol, ground truth only) trains beside it in the same run, on the same windows.

Outputs: runs/<dataset>/<run-id>/h<S>/ with student.pt and baseline.pt (plain state dicts),
students.json (the StudentsRun record), and _SUCCESS last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import ray
import ray.train
import torch
from torch import nn

from timedistill.conf import Config, DistillConfig
from timedistill.models import QuantileStudent, TimeDistillLoss, pinball_loss, reduce_feature_width
from timedistill.store.records import Cache, Dataset, Intervals, ModelSpec, StudentsRun, Teacher
from timedistill.store.registry import RegistryError, read_version
from timedistill.store.storage import SUCCESS, Storage
from timedistill.store.weights import read_state, state_bytes
from timedistill.tasks import loops
from timedistill.tasks.cache import TeacherOutputs, cache_dataset, stored_feature_dim, unpack
from timedistill.tasks.errors import StepError
from timedistill.tasks.events import Listener
from timedistill.tasks.intervals import calibrate
from timedistill.tasks.progress import relay
from timedistill.tasks.training import Batch, Plan, TrainingJob, Worker, run_training
from timedistill.tasks.windows import WindowBatcher, window_starts

STUDENTS_META = "students.json"


class DistillStep(nn.Module):
    """Student plus loss (whose teacher-side projection trains with it) as one module, so that
    DDP synchronizes the projection's gradients together with the student's. A quantile student
    adds the pinball loss of its quantiles on the ground truth; the distillation terms see its
    median (its point forecast) only."""

    def __init__(self, student: nn.Module, loss: TimeDistillLoss) -> None:
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, x: torch.Tensor, y: torch.Tensor, teacher_prediction: torch.Tensor,
                teacher_feature: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(self.student, QuantileStudent):
            prediction, feature = self.student(x)  # [B, S, C], [B, C, D]
            return self.loss(prediction.float(), feature.float(), teacher_prediction, teacher_feature, y)
        (prediction, feature), quantiles = self.student.quantiles(x, calibrated=False)  # quantiles [B, Q, S, C]
        total, parts = self.loss(prediction.float(), feature.float(), teacher_prediction, teacher_feature, y)
        parts["pinball"] = pinball_loss(quantiles.float(), y, self.student.levels)
        return total + parts["pinball"], parts


def students_dir(run_dir: str, horizon: int) -> str:
    return f"{run_dir}/h{horizon}"


def find_students(storage: Storage, run_dir: str, horizon: int) -> StudentsRun | None:
    directory = students_dir(run_dir, horizon)
    if not storage.complete(directory):
        return None
    return StudentsRun.from_json(storage.read_json(f"{directory}/{STUDENTS_META}"), directory=directory,
                                 cached=True)


def student_spec(config: Config, dataset: Dataset, horizon: int) -> ModelSpec:
    return ModelSpec.resolve("student", config.student.name, lookback=config.data.lookback, horizon=horizon,
                             n_vars=len(dataset.variables), preset=config.student.preset or config.data.name,
                             params=config.student.params, quantiles=config.student.quantiles)


def warm_base(config: Config, storage: Storage, dataset: Dataset, horizon: int) -> StudentsRun | None:
    """The run a warm start begins from (distill.warm_start): the one behind the model's
    registered LATEST version, when its student has this run's architecture, window and variables."""
    try:
        entry = read_version(storage, config.model_name(horizon))
    except RegistryError:
        return None
    found = find_students(storage, f"runs/{entry.config.dataset}/{entry.config.run_id}", horizon)
    spec = student_spec(config, dataset, horizon).to_json()
    if found is None or found.spec("student").to_json() != spec or found.variables != dataset.variables:
        return None
    return found


def train_students(config: Config, storage: Storage, dataset: Dataset, teacher: Teacher, cache: Cache | None,
                   run_dir: str, *, series: ray.ObjectRef, base: StudentsRun | None = None,
                   listener: Listener | None = None, callbacks: Sequence[loops.Callback] = ()) -> StudentsRun:
    """Distill the student (and train the baseline) for the teacher's horizon, and store them
    (find_students first: this always trains): from scratch, or for distill.warm_epochs from the
    weights of `base`."""
    distill, horizon = config.distill, teacher.horizon
    if distill.use_cache and cache is None:
        raise StepError("distill.use_cache is set but no teacher cache was given")
    spec = student_spec(config, dataset, horizon)
    epochs = distill.warm_epochs if base else distill.epochs
    init = {role: read_state(storage, base.weights_path(role)) for role in base.models} if base else {}
    # Ray: read the cache before the workers take their CPUs; the workers then only split the
    # materialized blocks (read tasks competing with training workers for CPUs can wait forever)
    datasets = {"teacher": cache_dataset(storage, cache, "train").materialize()} if distill.use_cache else None
    with relay(listener, stage="distill", horizon=horizon, epochs=epochs) as progress:
        job = StudentsJob(model=spec, settings=distill, epochs=epochs, series=series, splits=dataset.splits,
                          mixed_precision=config.ray.mixed_precision, init=init, callbacks=(*progress, *callbacks),
                          teacher=teacher, storage=storage,
                          teacher_feature_dim=cache.feature_dim if cache else stored_feature_dim(teacher, config))
        result = run_training(job, config, storage,
                              f"students-{dataset.name}-h{horizon}-{run_dir.rsplit('/', 1)[-1]}", datasets=datasets)
    report, intervals = result.report, None
    if spec.quantiles:  # the conformal correction joins the weights that are stored
        intervals = calibrated(spec, result.weights["student"], ray.get(series), dataset)
    directory = students_dir(run_dir, horizon)
    students = StudentsRun(
        dataset=dataset.name, data_fingerprint=dataset.fingerprint, lookback=spec.lookback, horizon=horizon,
        n_vars=spec.n_vars, teacher_dir=teacher.directory, teacher_name=teacher.name,
        cache_dir=cache.directory if cache else None, use_cache=distill.use_cache,
        teacher_forward_batches=report.teacher_forward_batches, device=report.device,
        resumed_from=report.resumed_from, worker_nodes=report.worker_nodes, peak_memory_mb=report.peak_memory_mb,
        distill=distill.model_dump(mode="json"), models=report.models, intervals=intervals, ray_run=result.ray_run,
        variables=dataset.variables, created=datetime.now(UTC).isoformat(timespec="microseconds"),
        warm_from=base.directory if base else None, directory=directory)
    with storage.publish_dir(directory) as staging:
        for role in students.models:
            storage.write_bytes(f"{staging}/{role}.pt", state_bytes(result.weights[role]))  # the forecaster alone
        storage.write_json(f"{staging}/{STUDENTS_META}", students.to_json())
        storage.write_bytes(f"{staging}/{SUCCESS}", b"")
    return students


def calibrated(spec: ModelSpec, weights: dict[str, torch.Tensor], series: np.ndarray, dataset: Dataset) -> Intervals:
    """Calibrate a quantile student's intervals on the validation split (tasks/intervals.py), in
    place in `weights`, and score them on the test split."""
    model = spec.build()
    model.load_state_dict(weights)
    batcher = WindowBatcher(series, spec.lookback, spec.horizon)
    starts = {split: window_starts(dataset.splits[split], spec.lookback, spec.horizon) for split in ("val", "test")}
    intervals = calibrate(model, batcher, starts["val"], starts["test"])
    weights["widen"] = model.widen.detach().clone()
    return intervals


@dataclass(frozen=True, kw_only=True)
class StudentsJob(TrainingJob):
    """The distilled student (TimeDistill loss) and the plain baseline (MSE), from the same
    initial weights, on the same batches."""

    settings: DistillConfig
    teacher: Teacher  # run online when distill.use_cache is off
    storage: Storage  # where the teacher's weights are
    teacher_feature_dim: int  # the width of the teacher features the loss projects from

    def setup(self, worker: Worker) -> Plan:
        settings, device = self.settings, worker.device
        train_starts = worker.starts["train"]

        # 1. this worker's train windows, with the teacher's outputs from the cache or from the teacher
        teacher_model, forward_batches = None, 0
        if settings.use_cache:
            cached = read_shard(self.model.horizon, self.model.n_vars, self.teacher_feature_dim)
            window_ids = cached.window_id

            def train_windows(epoch: int) -> np.ndarray:  # a fixed shard, shuffled locally every epoch
                return np.random.default_rng(settings.seed + epoch * 1009 + worker.rank).permutation(len(window_ids))
        else:
            teacher_model = self.teacher.load(self.storage, device)
            window_ids = np.arange(len(train_starts))

            def train_windows(epoch: int) -> np.ndarray:
                return loops.shard_epoch(len(window_ids), worker.rank, worker.world, settings.seed + epoch)

        def make_batch(positions: np.ndarray) -> Batch:
            nonlocal forward_batches
            x, y = worker.batcher(train_starts[window_ids[positions]])
            batch = {"x": x.to(device), "y": y.to(device)}
            if teacher_model is None:
                batch["teacher_prediction"] = torch.from_numpy(cached.prediction[positions]).to(device).float()
                batch["teacher_feature"] = torch.from_numpy(cached.feature[positions]).to(device).float()
            else:
                with torch.inference_mode():
                    prediction, feature = teacher_model(batch["x"])
                forward_batches += 1
                batch["teacher_prediction"] = prediction.float().clone()
                batch["teacher_feature"] = reduce_feature_width(feature, self.teacher_feature_dim).float().clone()
            return batch

        # 2. the trainees: the distilled student, and the baseline from the same initial weights
        def build(spec: ModelSpec) -> nn.Module:
            torch.manual_seed(settings.seed)
            return spec.build()

        student = build(self.model)
        loss = TimeDistillLoss(self.teacher_feature_dim, student.feature_dim, settings.alpha, settings.beta,
                               tau=settings.tau, scales=settings.scales, sup=settings.sup, period=settings.period,
                               scale=settings.multiscale)
        step_module = loops.prepare(DistillStep(student, loss))  # Ray: device + DDP

        def distill_loss(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return step_module(batch["x"], batch["y"], batch["teacher_prediction"], batch["teacher_feature"])

        trainees = [self.trainee("student", step_module, loops.unwrap(step_module).student, distill_loss)]
        if settings.baseline:
            baseline_module = loops.prepare(build(self.spec_of("baseline")))

            def plain_loss(batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                prediction = baseline_module(batch["x"]).prediction.float()
                return torch.nn.functional.mse_loss(prediction, batch["y"]), {}

            trainees.append(self.trainee("baseline", baseline_module, loops.unwrap(baseline_module), plain_loss))
        # 3. early stopping (in the loop) watches the validation MSE against the ground truth only
        return Plan(trainees=trainees, train_windows=train_windows, make_batch=make_batch,
                    forward_batches=lambda: forward_batches)

    def spec_of(self, trainee: str) -> ModelSpec:
        """The baseline forecasts the point alone, whatever the student's quantiles."""
        return self.model.point() if trainee == "baseline" else self.model

    def trainee(self, name: str, module: nn.Module, model: nn.Module, loss_fn: loops.LossFn) -> loops.Trainee:
        # the optimizer covers the whole module: for the student, that includes the projection
        settings = self.settings
        return loops.Trainee(
            name=name, module=module, model=model, loss_fn=loss_fn,
            optimizer=torch.optim.Adam(module.parameters(), lr=settings.lr), lr=settings.lr, decay=0.5,
            hold_epochs=settings.lr_hold_epochs, early=loops.EarlyStopping(settings.patience))


def read_shard(horizon: int, n_vars: int, feature_dim: int) -> TeacherOutputs:
    """Ray: this worker's shard of the cached teacher outputs, read once (Ray Data would re-read
    its source every epoch); rows are joined to windows by window_id, never by position."""
    shard = ray.train.get_dataset_shard("teacher")
    tables = [batch for batch in shard.iter_batches(batch_format="pyarrow", batch_size=None)]
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        raise RuntimeError("this worker received no cached teacher windows")
    return unpack(table, horizon, n_vars, feature_dim)
