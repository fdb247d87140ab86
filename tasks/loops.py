"""The training recipe that runs inside every Ray Train worker, shared by the teacher and the
students: sharded epochs, the lr schedule, early stopping on validation MSE, a checkpoint every
epoch, and whole-split evaluation (each rank scores its share, then one all-reduce).

The Ray-specific lines are few and marked `# Ray:`.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from timedistill.models import Forecaster
from timedistill.tasks.windows import WindowBatcher

STATE_FILE = "state.pt"
Wrapped = TypeVar("Wrapped", bound=nn.Module)


@dataclass
class Batch:
    """A batch of windows on the worker's device, and, when distilling, each teacher's outputs on them."""

    x: torch.Tensor  # [B, L, C]
    y: torch.Tensor  # [B, S, C]
    teacher_predictions: list[torch.Tensor] = field(default_factory=list)  # [B, S, C] per teacher
    teacher_features: list[torch.Tensor] = field(default_factory=list)  # [B, C, D] per teacher


LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


# ---- the schedule and early stopping ----------------------------------------------------------
def lr_at(epoch: int, lr: float, decay: float = 0.5, hold_epochs: int = 0) -> float:
    """Learning rate of a 0-based epoch: kept for `hold_epochs`, then multiplied by `decay`
    every epoch (the teachers' schedule is hold 0, decay 0.5: halved every epoch)."""
    return lr * decay ** max(epoch + 1 - max(hold_epochs, 1), 0)


@dataclass
class EarlyStopping:
    patience: int
    best: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, value: float, model: nn.Module) -> bool:
        """Record a validation score; True when it is the best so far."""
        if value < self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return True
        self.bad_epochs += 1
        return False

    @property
    def stopped(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]


@dataclass
class Trainee:
    """One model being trained: what the loop needs to step, score and checkpoint it."""

    name: str
    module: nn.Module  # what backward runs through (DDP-wrapped when there are several workers)
    model: Forecaster  # the forecaster itself (unwrapped), scored and saved
    loss_fn: LossFn  # batch -> (loss, parts)
    optimizer: torch.optim.Optimizer
    lr: float
    decay: float
    hold_epochs: int
    early: EarlyStopping
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: the fields of an Epoch record

    @property
    def active(self) -> bool:
        return not self.early.stopped

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module_state(), "optimizer": self.optimizer.state_dict(),
                "early": self.early.state_dict(), "history": self.history}

    def module_state(self) -> dict[str, torch.Tensor]:
        return getattr(self.module, "module", self.module).state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        getattr(self.module, "module", self.module).load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.early.load_state_dict(state["early"])
        self.history = state["history"]


# ---- data -------------------------------------------------------------------------------------
def shard_epoch(n: int, rank: int, world: int, seed: int) -> np.ndarray:
    """This rank's positions for one epoch: one permutation shared by every rank (same seed),
    padded by wrapping so that every rank gets the same number of batches (DDP needs that)."""
    order = np.random.default_rng(seed).permutation(n)
    per_rank = -(-n // world)
    order = np.resize(order, per_rank * world)
    return order[rank::world]


class EpochBatches(NamedTuple):
    """One rank's training batches of one epoch, and how many there are (every rank runs the
    same number: DDP needs that)."""

    steps: int
    batches: Iterator[Batch]


def sharded_epochs(n: int, rank: int, world: int, seed: int, batch_size: int,
                   make_batch: Callable[[np.ndarray], Batch]) -> Callable[[int], EpochBatches]:
    """Epochs over n windows held in memory: each one a fresh seeded shard (shard_epoch), cut
    into full batches that `make_batch(positions)` turns into tensors."""

    def epoch_batches(epoch: int) -> EpochBatches:
        positions = shard_epoch(n, rank, world, seed + epoch)
        return EpochBatches(steps=max(len(positions) // batch_size, 1),
                            batches=(make_batch(chunk) for chunk in batches(positions, batch_size, drop_last=True)))

    return epoch_batches


def batches(positions: np.ndarray, batch_size: int, drop_last: bool = False) -> Iterator[np.ndarray]:
    """Consecutive batches; training drops a short last batch (the Time-Series-Library's
    convention, and BatchNorm cannot train on a batch of one), evaluation keeps every window."""
    stop = len(positions)
    if drop_last and stop >= batch_size:
        stop -= stop % batch_size
    for begin in range(0, stop, batch_size):
        yield positions[begin : begin + batch_size]


def gather(value: Any) -> list[Any]:
    """One value from every rank, in rank order (a collective: every rank calls it)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def worker_nodes() -> list[str]:
    """The Ray node of every rank (where the data-parallel group really ran)."""
    return gather(ray.get_runtime_context().get_node_id())


def own_peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


class Scores(NamedTuple):
    mse: float
    mae: float


@torch.inference_mode()
def evaluate(model: nn.Module, batcher: WindowBatcher, starts: np.ndarray, rank: int, world: int,
             device: torch.device) -> Scores:
    """MSE and MAE over every element of every window of a split (each rank scores a contiguous
    share; sums are all-reduced, so the result is the whole split's, identical on every rank),
    in batches whose size bounds the memory however many variables the series has."""
    model.eval()
    mine = np.array_split(np.arange(len(starts)), world)[rank]
    sums = [0.0, 0.0, 0.0]
    for chunk in batches(mine, batcher.inference_batch):
        x, y = batcher(starts[chunk])
        prediction = model(x.to(device)).prediction.float()
        error = prediction - y.to(device)
        sums[0] += float(error.square().sum())
        sums[1] += float(error.abs().sum())
        sums[2] += error.numel()
    sq, ab, count = all_reduce_sum(sums, device)
    return Scores(mse=sq / max(count, 1), mae=ab / max(count, 1))


# ---- the loop ---------------------------------------------------------------------------------
def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def load_checkpoint(trainees: list[Trainee]) -> int:
    """Ray: resume from the latest checkpoint of this run (after a worker failure, or when the
    same run is started again); returns the first epoch still to run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    for trainee in trainees:
        trainee.load_state_dict(state["trainees"][trainee.name])
    return int(state["epoch"]) + 1


def best_weights(folder: str) -> dict[str, dict[str, torch.Tensor]]:
    """Each trainee's best weights (by validation MSE) in a checkpoint folder this loop wrote."""
    state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    return {name: trainee["early"]["best_state"] for name, trainee in state["trainees"].items()}


def report_epoch(epoch: int, trainees: list[Trainee], metrics: dict[str, Any], rank: int) -> None:
    """Ray: report every epoch on every rank (a barrier); rank 0 attaches the checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            state = {"epoch": epoch, "trainees": {t.name: t.state_dict() for t in trainees}}
            torch.save(state, os.path.join(folder, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


class Callback:
    """Something the loop lets in at fixed points: progress for the terminal, fault injection in
    tests. Every rank calls every hook; each does nothing unless overridden."""

    def on_epoch_start(self, epoch: int, rank: int) -> None:
        """Before the first batch of a 0-based epoch."""

    def on_batch(self, epoch: int, step: int, steps: int, rank: int) -> None:
        """Before a training batch (step of steps, in a 0-based epoch)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any], rank: int) -> None:
        """After the epoch's checkpoint was reported, with what was reported."""


def train(trainees: list[Trainee], *, epochs: int, epoch_batches: Callable[[int], EpochBatches],
          val_batcher: WindowBatcher, val_starts: np.ndarray, device: torch.device, mixed_precision: bool = False,
          callbacks: Sequence[Callback] = ()) -> tuple[int, int]:
    """Train every trainee until its early stopping fires or `epochs` run out; returns (epochs
    run in all, the epoch this attempt resumed from: 0 unless a checkpoint was restored).
    `epoch_batches(epoch)` gives this rank's training batches of an epoch, on the device."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    start = load_checkpoint(trainees)
    epoch = start - 1
    for epoch in range(start, epochs):
        active = [t for t in trainees if t.active]
        if not active:
            break
        for callback in callbacks:
            callback.on_epoch_start(epoch, rank)
        # 1. the lr of this epoch
        for trainee in active:
            for group in trainee.optimizer.param_groups:
                group["lr"] = lr_at(epoch, trainee.lr, trainee.decay, trainee.hold_epochs)
        # 2. one pass over this rank's share of the train windows
        began = time.perf_counter()
        sums = {t.name: 0.0 for t in active}
        parts_sums: dict[str, dict[str, float]] = {t.name: {} for t in active}
        steps = 0
        for trainee in active:
            trainee.module.train()
        this_epoch = epoch_batches(epoch)
        for step, batch in enumerate(this_epoch.batches):
            for callback in callbacks:
                callback.on_batch(epoch, step, this_epoch.steps, rank)
            for trainee in active:
                with autocast(device, mixed_precision):
                    loss, parts = trainee.loss_fn(batch)
                trainee.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                trainee.optimizer.step()
                sums[trainee.name] += float(loss.detach())
                for key, value in parts.items():
                    parts_sums[trainee.name][key] = parts_sums[trainee.name].get(key, 0.0) + float(value)
            steps += 1
        seconds = time.perf_counter() - began
        # 3. validation MSE on the whole split; early stopping keeps the best weights
        metrics: dict[str, Any] = {"epoch": epoch + 1, "epoch_seconds": seconds}
        for trainee in active:
            scores = evaluate(trainee.model, val_batcher, val_starts, rank, world, device)
            improved = trainee.early.update(epoch, scores.mse, trainee.model)
            mean_parts = {k: v / max(steps, 1) for k, v in parts_sums[trainee.name].items()}
            record = {"epoch": epoch + 1, "train_loss": sums[trainee.name] / max(steps, 1),
                      "val_mse": scores.mse, "val_mae": scores.mae, "seconds": seconds,
                      "lr": trainee.optimizer.param_groups[0]["lr"], "improved": improved, "parts": mean_parts}
            trainee.history.append(record)  # an Epoch record's fields (plain, for the checkpoint)
            metrics.update({f"{trainee.name}/{k}": v for k, v in {**record, **mean_parts}.items()
                            if k not in ("epoch", "parts")})
            metrics[f"{trainee.name}/stopped"] = trainee.early.stopped
        # 4. Ray: checkpoint and report (every rank, every epoch)
        report_epoch(epoch, trainees, metrics, rank)
        for callback in callbacks:
            callback.on_epoch_end(epoch, metrics, rank)
    return epoch + 1, start


def restore_best(trainee: Trainee) -> None:
    if trainee.early.best_state is not None:
        trainee.model.load_state_dict(trainee.early.best_state)


def unwrap(module: nn.Module, kind: type[Wrapped]) -> Wrapped:
    """The module that `prepare` wrapped in DDP (or `module` itself, with one worker), checked to be a `kind`."""
    inner = getattr(module, "module", module)
    if not isinstance(inner, kind):
        raise TypeError(f"expected a {kind.__name__} in the prepared module, found a {type(inner).__name__}")
    return inner


def prepare(module: nn.Module) -> nn.Module:
    """Ray: move to the worker's device and wrap in DDP when there are several workers."""
    return ray.train.torch.prepare_model(module)
