"""The skeleton every Ray Train run follows, teacher or students: set up, train, test, finish.

A job (TeacherJob in tasks/teacher.py, StudentsJob in tasks/students.py) is a frozen, picklable
description of one run whose `setup` says what to train and on which batches. Everything else
is here, once: the worker's rank, device and windows, the loop (tasks/loops.py), scoring each
trainee's best weights on the test split, and what goes back to the driver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from timedistill.conf import Config, DistillConfig, TeacherConfig
from timedistill.store.record import Record
from timedistill.store.records import ModelSpec, TrainedModel
from timedistill.store.storage import Storage
from timedistill.tasks import lifetime, loops
from timedistill.tasks.errors import Interrupted
from timedistill.tasks.runtime import Workers, run_concurrently
from timedistill.tasks.windows import Span, WindowBatcher, window_starts

if TYPE_CHECKING:
    # Ray's type hints name Train V1's classes: ray.train swaps in V2's at import time, past what a type
    # checker follows. V2, the default of the Ray versions pyproject.toml allows, is what runs.
    from ray.train.v2.api.result import Result as TrainResult


@dataclass(frozen=True)
class Worker:
    """One Ray Train worker's view of the run: its rank, its device, and every split's windows."""

    rank: int
    world: int
    device: torch.device
    batcher: WindowBatcher
    starts: dict[str, np.ndarray]  # split -> first rows of its windows

    @classmethod
    def start(cls, job: TrainingJob) -> Worker:
        context = ray.train.get_context()
        series = ray.get(job.series)  # Ray: from the object store, once per node, shared by its workers
        lookback, horizon = job.model.lookback, job.model.horizon
        return cls(rank=context.get_world_rank(), world=context.get_world_size(),
                   device=ray.train.torch.get_device(), batcher=WindowBatcher(series, lookback, horizon),
                   starts={split: window_starts(span, lookback, horizon) for split, span in job.splits.items()})

    @property
    def device_name(self) -> str:
        return str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)


@dataclass
class Plan:
    """What a job trains, and on which batches."""

    trainees: list[loops.Trainee]
    epoch_batches: Callable[[int], loops.EpochBatches]  # epoch -> this rank's batches, on the device
    forward_batches: Callable[[], int] = lambda: 0  # teacher batches this rank ran online


@dataclass(frozen=True, kw_only=True)
class TrainingJob:
    """What every run needs on its workers; a subclass says what to train."""

    model: ModelSpec  # the architecture every trainee has
    settings: TeacherConfig | DistillConfig  # batch size, seed, lr, patience
    epochs: int  # at most: early stopping may end sooner
    series: ray.ObjectRef  # the standardized series [T, C], put once by the driver
    splits: dict[str, Span]
    mixed_precision: bool
    threads: int = 1  # torch threads of each worker: its CPUs (run_training sets it)
    init: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # trainee -> weights to start from
    callbacks: tuple[loops.Callback, ...] = ()  # progress to the terminal, faults in tests

    def setup(self, worker: Worker) -> Plan:
        raise NotImplementedError

    def spec_of(self, trainee: str) -> ModelSpec:
        """The architecture a trainee has (every trainee's is `model` unless a job says otherwise)."""
        return self.model


class WorkerReport(Record):
    """What rank 0 hands back to the driver."""

    models: dict[str, TrainedModel]  # trainee -> how its best weights scored
    feature_dim: int  # of the trained architecture
    teacher_forward_batches: int  # summed over ranks
    resumed_from: int
    worker_nodes: list[str]
    peak_memory_mb: list[float]
    start_memory_mb: list[float]  # peak before the job's setup: what the run added is the difference
    device: str


@dataclass(frozen=True)
class TrainingResult:
    report: WorkerReport
    weights: dict[str, dict[str, torch.Tensor]]  # trainee -> its best state dict
    ray_run: str  # Ray Train's run folder
    started: str  # when the run was handed to Ray Train (ISO 8601, UTC)


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def train_worker(loop_config: dict[str, TrainingJob]) -> WorkerReport:
    """Runs on every Ray Train worker."""
    job = loop_config["job"]
    # 1. set up: this worker, what the job trains, and the weights a warm start begins from
    torch.set_num_threads(job.threads)
    start_memory_mb = loops.own_peak_memory_mb()
    worker = Worker.start(job)
    plan = job.setup(worker)
    for trainee in plan.trainees:
        if trainee.name in job.init:
            trainee.model.load_state_dict(job.init[trainee.name])
    # 2. train, from the run's last checkpoint if there is one
    _, resumed_from = loops.train(
        plan.trainees, epochs=job.epochs, epoch_batches=plan.epoch_batches, val_batcher=worker.batcher,
        val_starts=worker.starts["val"], device=worker.device, mixed_precision=job.mixed_precision,
        callbacks=job.callbacks)
    # 3. test: each trainee's best weights on the whole test split
    models = {trainee.name: score_best(trainee, job.spec_of(trainee.name), worker) for trainee in plan.trainees}
    # 4. finish: what every rank contributes (collectives), reported by rank 0
    forward_batches = loops.all_reduce_sum([float(plan.forward_batches())], worker.device)[0]
    return WorkerReport(models=models, feature_dim=plan.trainees[0].model.feature_dim,
                        teacher_forward_batches=int(forward_batches), resumed_from=resumed_from,
                        worker_nodes=loops.worker_nodes(), peak_memory_mb=loops.gather(loops.own_peak_memory_mb()),
                        start_memory_mb=loops.gather(start_memory_mb),
                        device=worker.device_name)


def score_best(trainee: loops.Trainee, spec: ModelSpec, worker: Worker) -> TrainedModel:
    """Restore the trainee's best weights and score them on the whole test split."""
    loops.restore_best(trainee)
    scores = loops.evaluate(trainee.model, worker.batcher, worker.starts["test"], worker.rank, worker.world,
                            worker.device)
    return TrainedModel(
        name=spec.name, hparams=spec.hparams, quantiles=spec.quantiles, params=trainee.model.num_params(),
        val_mse=trainee.early.best,
        best_epoch=trainee.early.best_epoch + 1, epochs=len(trainee.history), test_mse=scores.mse,
        test_mae=scores.mae, history=trainee.history)


def fit_interruptibly(trainer: TorchTrainer, storage: Storage, checkpoints: str) -> TrainResult:
    """`trainer.fit()` in a thread of its own, so that Ctrl-C and SIGTERM reach this thread.

    Called in the main thread, fit() installs Ray Train's SIGINT handler, which aborts the run
    and then exits the process (SystemExit, past every step's error handling), and leaves that
    handler installed after fit returns. Here an interrupt raises Interrupted, naming the
    checkpoints (under `storage`) the same command resumes from, or none where the run had not
    written one yet, once the run in flight has been stopped (run_concurrently). The thread
    carries the caller's context (Prefect's run context among it) and is a daemon, so it never
    holds the process open."""
    try:
        (result,) = run_concurrently([trainer.fit], 1, storage.uri(checkpoints))
    except Interrupted:
        if not any(entry.startswith("checkpoint_") and not entry.endswith(".json")
                   for entry in storage.listdir(checkpoints)):
            interrupt = Interrupted(None)
            lifetime.last_words(interrupt.describe())
            raise interrupt from None
        raise
    return cast("TrainResult", result)  # fit returns V2's Result (see TrainResult)


def run_training(job: TrainingJob, config: Config, storage: Storage, name: str) -> TrainingResult:
    """Ray: run `job` on Ray Train workers (`Workers.of(config)`). Checkpoints go to
    <storage root>/ray/<name>, so starting the same name again resumes a killed run."""
    workers = Workers.of(config)
    job = dataclasses.replace(job, threads=workers.threads)
    trainer = TorchTrainer(
        cast("Callable[[dict[str, Any]], None]", train_worker),  # V1's hint; V2 hands rank 0's return value back
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=workers.count, use_gpu=workers.gpus > 0,
                                     resources_per_worker=workers.resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage.path("ray"),
            storage_filesystem=None if storage.is_local else storage.fs,
            failure_config=FailureConfig(max_failures=config.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    started = timestamp()
    result = fit_interruptibly(trainer, storage, f"ray/{name}")
    report = result.return_value  # rank 0's
    if result.checkpoint is None or not isinstance(report, WorkerReport):  # every epoch reports a checkpoint
        raise RuntimeError(f"training run {name} ended without a checkpoint or without its workers' report")
    with result.checkpoint.as_directory() as folder:
        weights = loops.best_weights(folder)
    return TrainingResult(report, weights, result.path, started)
