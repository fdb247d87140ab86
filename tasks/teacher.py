"""Teacher training on Ray Train: one teacher per (dataset, horizon), data-parallel over
`ray.num_workers` workers, checkpointed every epoch so that a lost worker or a killed run
resumes instead of starting over.

A finished teacher lives at teachers/<dataset>/<key>/ (teacher.pt: the best weights, a plain
state dict; teacher.json: the Teacher record; _SUCCESS last). The key hashes the data
fingerprint, the window and the teacher section, so a teacher is reused exactly when it would be
trained the same way. `teacher.refresh` bends that rule for recurring retrains: `always` trains
anew on every run (a salt of the run joins the key), `warm` starts a teacher for new data from
the latest one of the same architecture, window and variables (`warm_base`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import ray
import torch

from timedistill.conf import AUTO, FORMAT, Config, ConfigError, TeacherConfig, stable_hash
from timedistill.models import Forecaster
from timedistill.store.record import StaleRecord, read_record, write_record
from timedistill.store.records import (
    TEACHER_WEIGHTS,
    Dataset,
    HorizonTeachers,
    ModelSpec,
    Teacher,
    TeacherChoice,
    TeacherSet,
)
from timedistill.store.storage import SUCCESS, Storage
from timedistill.store.weights import build_forecaster, read_state, resolve_spec, state_bytes
from timedistill.tasks import loops
from timedistill.tasks.events import Listener
from timedistill.tasks.progress import relay
from timedistill.tasks.training import Plan, TrainingJob, Worker, run_training, timestamp

TEACHER_META = "teacher.json"
SHARPNESS = 10.0  # distill.teacher_weighting val-softmax: a teacher 10% worse than the best weighs e^-1 as much


def teacher_key(config: Config, dataset: Dataset, horizon: int, salt: str | None = None) -> str:
    payload = {
        "data": dataset.fingerprint,
        "lookback": config.data.lookback,
        "horizon": horizon,
        "teacher": config.teacher.key_payload(),
        "preset": teacher_preset(config),
        "format": FORMAT,
    }
    if salt is not None:  # teacher.refresh: always
        payload["salt"] = salt
    return stable_hash(payload)[:16]


def teacher_preset(config: Config) -> str:
    return config.teacher.preset or config.data.name


def teacher_dir(dataset: Dataset, key: str) -> str:
    return f"teachers/{dataset.name}/{key}"


def find_teacher(config: Config, storage: Storage, dataset: Dataset, horizon: int,
                 salt: str | None = None) -> Teacher | None:
    key = teacher_key(config, dataset, horizon, salt)
    return read_teacher(storage, teacher_dir(dataset, key), key)


def read_teacher(storage: Storage, directory: str, key: str) -> Teacher | None:
    if not storage.complete(directory):
        return None
    return read_record(storage, f"{directory}/{TEACHER_META}", Teacher, directory=directory, key=key, cached=True)


def teacher_spec(config: Config, dataset: Dataset, horizon: int) -> ModelSpec:
    return resolve_spec("teacher", config.teacher.name, lookback=config.data.lookback, horizon=horizon,
                             n_vars=len(dataset.variables), preset=teacher_preset(config),
                             params=config.teacher.params)


def member_configs(config: Config, dataset: Dataset, horizon: int) -> list[Config]:
    """The configs a teacher step trains: the config itself, or one per teacher of teacher.names
    or candidate of teacher.name auto, each exactly as if that teacher were named alone (so each
    is found by its own key). Every member's spec is resolved here, so that a bad name fails
    before any training, naming the key it came from."""
    if config.teacher.members() == [config.teacher.name]:
        return [config]
    key = "teacher.names" if config.teacher.names else "teacher.candidates"
    configs = [config.model_copy(update={"teacher": config.teacher.alone(name)}) for name in config.teacher.members()]
    for member in configs:
        resolve_spec(key, member.teacher.name, lookback=config.data.lookback, horizon=horizon,
                          n_vars=len(dataset.variables), preset=teacher_preset(member), params={})
    return configs


def horizon_teachers(config: Config, trained: list[Teacher]) -> HorizonTeachers:
    """What the teachers trained for one horizon make of it: the one alone; teacher.name auto's
    pick (the lowest validation MSE; the test split plays no part); or teacher.names' members, all
    teaching, weighed by distill.teacher_weighting (the results compare with the best of them)."""
    horizon = trained[0].horizon
    if config.teacher.name == AUTO:
        best = min(trained, key=lambda teacher: teacher.val_mse)  # ties: the first listed
        choice = TeacherChoice(horizon=horizon, chosen=best.name, candidates=[t.score() for t in trained])
        return HorizonTeachers(horizon=horizon, trained=trained, sources=[best], weights=[1.0], chosen=best,
                               choice=choice)
    if len(trained) == 1:
        return HorizonTeachers(horizon=horizon, trained=trained, sources=trained, weights=[1.0], chosen=trained[0])
    ensemble = weigh(trained, config.distill.teacher_weighting)
    return HorizonTeachers(horizon=horizon, trained=trained, sources=trained, weights=ensemble.weights,
                           chosen=ensemble.primary, ensemble=ensemble)


def weigh(members: list[Teacher], weighting: str) -> TeacherSet:
    """teacher.names: the weights that combine the members' predictions. val-softmax:
    softmax(-SHARPNESS * val MSE / best val MSE); uniform; learned: None, trained with the student."""
    scores = np.array([member.val_mse for member in members], dtype=np.float64)
    if weighting == "val-softmax" and not (np.isfinite(scores).all() and scores.min() > 0):
        raise ConfigError(f"distill.teacher_weighting: val-softmax needs every teacher's validation MSE; "
                          f"got {dict(zip([m.name for m in members], scores.tolist(), strict=True))}")
    weights: list[float] | None = None
    if weighting == "val-softmax":
        logits = -SHARPNESS * scores / scores.min()
        weights = (np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()).tolist()
    elif weighting == "uniform":
        weights = [1.0 / len(members)] * len(members)
    return TeacherSet(horizon=members[0].horizon, weighting=weighting, members=members, weights=weights)


def warm_base(config: Config, storage: Storage, dataset: Dataset, horizon: int) -> Teacher | None:
    """The teacher a warm start begins from: the newest one of the same architecture, window and
    variables trained on other data (an earlier version of the series), if any."""
    spec = teacher_spec(config, dataset, horizon).to_json()
    found = []
    for key in storage.listdir(f"teachers/{dataset.name}"):
        try:
            teacher = read_teacher(storage, f"teachers/{dataset.name}/{key}", key)
        except StaleRecord:  # trained by an earlier format: not a start for this one
            continue
        if (teacher is not None and teacher.data_fingerprint != dataset.fingerprint
                and teacher.spec.to_json() == spec and teacher.variables == dataset.variables):
            found.append(teacher)
    return max(found, key=lambda teacher: teacher.created or "", default=None)


def train_teacher(config: Config, storage: Storage, dataset: Dataset, horizon: int, *, series: ray.ObjectRef,
                  salt: str | None = None, base: Teacher | None = None, listener: Listener | None = None,
                  callbacks: Sequence[loops.Callback] = ()) -> Teacher:
    """Train the teacher of one horizon and store it (find_teacher first: this always trains):
    from scratch, or for teacher.warm_epochs from `base`'s weights."""
    key = teacher_key(config, dataset, horizon, salt)
    spec = teacher_spec(config, dataset, horizon)
    epochs = config.teacher.warm_epochs if base else config.teacher.epochs
    init = {"teacher": read_state(storage, base.weights_path)} if base else {}
    with relay(listener, stage="teacher", horizon=horizon, epochs=epochs) as progress:
        job = TeacherJob(model=spec, settings=config.teacher, epochs=epochs, series=series, splits=dataset.splits,
                         mixed_precision=config.ray.mixed_precision, init=init, callbacks=(*progress, *callbacks))
        result = run_training(job, config, storage, f"teacher-{dataset.name}-h{horizon}-{key}")
    weights = state_bytes(result.weights["teacher"])
    report = result.report
    directory = teacher_dir(dataset, key)
    teacher = Teacher(
        **report.models["teacher"].model_dump(), dataset=dataset.name, data_fingerprint=dataset.fingerprint,
        lookback=spec.lookback, horizon=horizon, n_vars=spec.n_vars, feature_dim=report.feature_dim,
        device=report.device, resumed_from=report.resumed_from, worker_nodes=report.worker_nodes,
        peak_memory_mb=report.peak_memory_mb, start_memory_mb=report.start_memory_mb,
        sha256=hashlib.sha256(weights).hexdigest(), ray_run=result.ray_run,
        variables=dataset.variables, started=result.started, created=timestamp(),
        warm_from=base.directory if base else None, directory=directory, key=key)
    with storage.publish_dir(directory) as staging:
        storage.write_bytes(f"{staging}/{TEACHER_WEIGHTS}", weights)
        write_record(storage, f"{staging}/{TEACHER_META}", teacher)
        storage.write_bytes(f"{staging}/{SUCCESS}", b"")
    return teacher


@dataclass(frozen=True, kw_only=True)
class TeacherJob(TrainingJob):
    """Supervised training of the teacher on the ground truth (MSE)."""

    settings: TeacherConfig

    def setup(self, worker: Worker) -> Plan:
        settings = self.settings
        torch.manual_seed(settings.seed)
        module = loops.prepare(build_forecaster(self.model))  # Ray: to the device, DDP-wrapped when world > 1
        train_starts = worker.starts["train"]

        def loss_fn(batch: loops.Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            prediction = module(batch.x).prediction
            return torch.nn.functional.mse_loss(prediction.float(), batch.y), {}

        def make_batch(positions: np.ndarray) -> loops.Batch:
            x, y = worker.batcher(train_starts[positions])
            return loops.Batch(x.to(worker.device, non_blocking=True), y.to(worker.device, non_blocking=True))

        trainee = loops.Trainee(
            name="teacher", module=module, model=loops.unwrap(module, Forecaster), loss_fn=loss_fn,
            optimizer=torch.optim.Adam(module.parameters(), lr=settings.lr), lr=settings.lr,
            decay=settings.lr_decay, hold_epochs=1, early=loops.EarlyStopping(settings.patience))
        return Plan(trainees=[trainee], epoch_batches=loops.sharded_epochs(
            len(train_starts), worker.rank, worker.world, settings.seed, settings.batch_size, make_batch))
