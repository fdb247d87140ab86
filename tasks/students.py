"""Distillation on Ray Train: the student learns from the ground truth and the teacher (read from
the Parquet cache with Ray Data, or run online), and the plain-MLP baseline (same architecture,
same protocol, ground truth only) trains beside it in the same run, on the same windows.

Outputs: runs/<dataset>/<run-id>/h<S>/ with student.pt and baseline.pt (plain state dicts),
students.json (what was trained and how it scored), and _SUCCESS last.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.train
import torch
from torch import nn

import models
from conf import Config
from models import TimeDistillLoss, reduce_feature_width
from tasks import loops
from tasks.cache import Cache, cache_dataset, unpack
from tasks.errors import StepError
from tasks.ingest import Dataset
from tasks.progress import Listener, relay
from tasks.runtime import run_training
from tasks.storage import SUCCESS, Storage
from tasks.teacher import Teacher, load_standardized, load_teacher, resolved_hparams
from tasks.windows import WindowBatcher, window_starts

STUDENTS_META = "students.json"
ROLES = ("student", "baseline")


@dataclass(frozen=True)
class Students:
    """The distilled student and the baseline of one horizon, in storage."""

    directory: str
    meta: dict[str, Any]
    cached: bool

    def weights_path(self, role: str) -> str:
        return f"{self.directory}/{role}.pt"

    def build(self, role: str) -> nn.Module:
        info = self.meta["models"][role]
        return models.build_model(info["name"], lookback=self.meta["lookback"], horizon=self.meta["horizon"],
                                  n_vars=self.meta["n_vars"], **info["hparams"])

    def load(self, storage: Storage, role: str, device: str | torch.device = "cpu") -> nn.Module:
        model = self.build(role)
        state = torch.load(io.BytesIO(storage.read_bytes(self.weights_path(role))), map_location=device,
                           weights_only=True)
        model.load_state_dict(state)
        return model.to(device).eval()


class DistillStep(nn.Module):
    """Student plus loss (whose teacher-side projection trains with it) as one module, so that
    DDP synchronizes the projection's gradients together with the student's."""

    def __init__(self, student: nn.Module, loss: TimeDistillLoss) -> None:
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, x: torch.Tensor, y: torch.Tensor, teacher_prediction: torch.Tensor,
                teacher_feature: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prediction, feature = self.student(x)  # [B, S, C], [B, C, D]
        return self.loss(prediction.float(), feature.float(), teacher_prediction, teacher_feature, y)


def students_dir(run_dir: str, horizon: int) -> str:
    return f"{run_dir}/h{horizon}"


def find_students(storage: Storage, run_dir: str, horizon: int) -> Students | None:
    directory = students_dir(run_dir, horizon)
    if not storage.complete(directory):
        return None
    return Students(directory, storage.read_json(f"{directory}/{STUDENTS_META}"), cached=True)


def train_students(config: Config, storage: Storage, dataset: Dataset, teacher: Teacher, cache: Cache | None,
                   run_dir: str, *, series_ref: ray.ObjectRef | None = None, on_event: Listener | None = None,
                   fault: loops.Fault | None = None) -> Students:
    """Distill the student (and train the baseline) for the teacher's horizon, or reuse them."""
    horizon = teacher.meta["horizon"]
    existing = find_students(storage, run_dir, horizon)
    if existing is not None:
        return existing
    distill = config.distill
    if distill.use_cache and cache is None:
        raise StepError("distill.use_cache is set but no teacher cache was given")
    n_vars = len(dataset.variables)
    hparams = resolved_hparams("student", config.student.name, config.data.lookback, horizon, n_vars,
                               config.student.preset or config.data.name, config.student.params)
    if series_ref is None:
        series_ref = ray.put(load_standardized(storage, dataset))
    use_cache = distill.use_cache
    feature_dim = cache.feature_dim if cache is not None else min(teacher.meta["feature_dim"],
                                                                  distill.feature_max_dim)
    # Ray: read the cache before the workers take their CPUs; the workers then only split the
    # materialized blocks (read tasks competing with training workers for CPUs can wait forever)
    datasets = {"teacher": cache_dataset(storage, cache, "train").materialize()} if use_cache else None
    with relay(on_event, stage="distill", horizon=horizon) as events:
        spec = {
            "student": config.student.name, "hparams": hparams, "lookback": config.data.lookback,
            "horizon": horizon, "n_vars": n_vars, "series": series_ref, "rows": dataset.manifest["splits"],
            "distill": distill.model_dump(), "teacher_feature_dim": feature_dim, "use_cache": use_cache,
            "storage": storage, "teacher": teacher, "mixed_precision": config.ray.mixed_precision,
            "events": events, "fault": fault,
        }
        summary, state, ray_run = run_training(students_worker, spec, config, storage,
                                               f"students-{dataset.name}-h{horizon}-{run_dir.rsplit('/', 1)[-1]}",
                                               datasets=datasets)
    meta = {
        "dataset": dataset.name, "data_fingerprint": dataset.fingerprint, "lookback": config.data.lookback,
        "horizon": horizon, "n_vars": n_vars, "teacher": teacher.directory, "teacher_name": teacher.meta["name"],
        "cache": cache.directory if cache is not None else None, "use_cache": use_cache,
        "teacher_forward_batches": summary["teacher_forward_batches"], "device": summary["device"],
        "resumed_from": summary["resumed_from"], "worker_nodes": summary["worker_nodes"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "distill": distill.model_dump(mode="json"), "models": summary["models"], "ray_run": ray_run,
    }
    directory = students_dir(run_dir, horizon)
    with storage.publish_dir(directory) as staging:
        for role in summary["models"]:
            buffer = io.BytesIO()
            torch.save(state["trainees"][role]["early"]["best_state"], buffer)  # the forecaster alone
            storage.write_bytes(f"{staging}/{role}.pt", buffer.getvalue())
        storage.write_json(f"{staging}/{STUDENTS_META}", meta)
        storage.write_bytes(f"{staging}/{SUCCESS}", b"")
    return Students(directory, meta, cached=False)


def students_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    settings = spec["distill"]
    lookback, horizon, n_vars = spec["lookback"], spec["horizon"], spec["n_vars"]
    series = ray.get(spec["series"])  # Ray: from the object store, once per node
    batcher = WindowBatcher(series, lookback, horizon)
    starts = {split: window_starts(tuple(span), lookback, horizon) for split, span in spec["rows"].items()}

    # 1. this worker's train windows, with the teacher's outputs from the cache or from the teacher
    teacher_model, forward_batches = None, 0
    if spec["use_cache"]:
        cached = read_shard(horizon, n_vars, spec["teacher_feature_dim"])
        window_ids = cached["window_id"]

        def train_windows(epoch: int) -> np.ndarray:  # a fixed shard, shuffled locally every epoch
            return np.random.default_rng(settings["seed"] + epoch * 1009 + rank).permutation(len(window_ids))
    else:
        teacher_model = load_teacher(spec["storage"], spec["teacher"], device)
        window_ids = np.arange(len(starts["train"]))

        def train_windows(epoch: int) -> np.ndarray:
            return loops.shard_epoch(len(window_ids), rank, world, settings["seed"] + epoch)

    def make_batch(positions: np.ndarray) -> dict[str, torch.Tensor]:
        nonlocal forward_batches
        x, y = batcher(starts["train"][window_ids[positions]])
        batch = {"x": x.to(device), "y": y.to(device)}
        if teacher_model is None:
            batch["teacher_prediction"] = torch.from_numpy(cached["prediction"][positions]).to(device).float()
            batch["teacher_feature"] = torch.from_numpy(cached["feature"][positions]).to(device).float()
        else:
            with torch.inference_mode():
                prediction, feature = teacher_model(batch["x"])
            forward_batches += 1
            batch["teacher_prediction"] = prediction.float().clone()
            batch["teacher_feature"] = reduce_feature_width(feature, spec["teacher_feature_dim"]).float().clone()
        return batch

    # 2. the trainees: the distilled student, and the baseline from the same initial weights
    def build() -> nn.Module:
        torch.manual_seed(settings["seed"])
        return models.build_model(spec["student"], lookback=lookback, horizon=horizon, n_vars=n_vars,
                                  **spec["hparams"])

    trainees = []
    student = build()
    loss = TimeDistillLoss(spec["teacher_feature_dim"], student.feature_dim, settings["alpha"], settings["beta"],
                           tau=settings["tau"], scales=settings["scales"], sup=settings["sup"],
                           period=settings["period"], scale=settings["multiscale"])
    step_module = loops.prepare(DistillStep(student, loss))  # Ray: device + DDP

    def distill_loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return step_module(batch["x"], batch["y"], batch["teacher_prediction"], batch["teacher_feature"])

    trainees.append(trainee("student", step_module, loops.unwrap(step_module).student, distill_loss, settings))
    if settings["baseline"]:
        baseline_module = loops.prepare(build())

        def plain_loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            prediction = baseline_module(batch["x"]).prediction.float()
            return torch.nn.functional.mse_loss(prediction, batch["y"]), {}

        trainees.append(trainee("baseline", baseline_module, loops.unwrap(baseline_module), plain_loss, settings))

    # 3. train; early stopping on the validation MSE against the ground truth only
    epochs, resumed_from = loops.train(
        trainees, epochs=settings["epochs"], batch_size=settings["batch_size"], train_windows=train_windows,
        make_batch=make_batch, val_batcher=batcher, val_starts=starts["val"], device=device,
        mixed_precision=spec["mixed_precision"], events=spec["events"], fault=spec["fault"])

    # 4. the best weights of each, scored on the whole test split
    summaries = {}
    for item in trainees:
        loops.restore_best(item)
        test = loops.evaluate(item.model, batcher, starts["test"], rank, world, device)
        summaries[item.name] = {
            "name": spec["student"], "hparams": spec["hparams"], "params": item.model.num_params(),
            "val_mse": item.early.best, "best_epoch": item.early.best_epoch + 1, "epochs": len(item.history),
            "test_mse": test["mse"], "test_mae": test["mae"], "history": item.history,
            "latency_ms": loops.latency_ms(item.model, batcher, starts["test"], device) if rank == 0 else None,
        }
    total_forward = int(loops.all_reduce_sum([float(forward_batches)], device)[0])
    return {"models": summaries, "epochs": epochs, "resumed_from": resumed_from,
            "teacher_forward_batches": total_forward, "worker_nodes": loops.worker_nodes(),
            "peak_memory_mb": loops.peak_memory_mb(),
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)}


def trainee(name: str, module: nn.Module, model: nn.Module, loss_fn: loops.LossFn,
            settings: dict[str, Any]) -> loops.Trainee:
    # the optimizer covers the whole module: for the student, that includes the projection
    return loops.Trainee(
        name=name, module=module, model=model, loss_fn=loss_fn,
        optimizer=torch.optim.Adam(module.parameters(), lr=settings["lr"]), lr=settings["lr"], decay=0.5,
        hold_epochs=settings["lr_hold_epochs"], early=loops.EarlyStopping(settings["patience"]))


def read_shard(horizon: int, n_vars: int, feature_dim: int) -> dict[str, np.ndarray]:
    """Ray: this worker's shard of the cached teacher outputs, read once (Ray Data would re-read
    its source every epoch); rows are joined to windows by window_id, never by position."""
    shard = ray.train.get_dataset_shard("teacher")
    tables = [batch for batch in shard.iter_batches(batch_format="pyarrow", batch_size=None)]
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        raise RuntimeError("this worker received no cached teacher windows")
    return unpack(table, horizon, n_vars, feature_dim)
