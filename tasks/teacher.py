"""Teacher training on Ray Train: one teacher per (dataset, horizon), data-parallel over
`ray.num_workers` workers, checkpointed every epoch so that a lost worker or a killed run
resumes instead of starting over.

A finished teacher lives at teachers/<dataset>/<key>/ (teacher.pt: the best weights, a plain
state dict; teacher.json: what it is and how it scored; _SUCCESS last). The key hashes the data
fingerprint, the window and the teacher section, so a teacher is reused exactly when it would be
trained the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.train
import torch

import models
from conf import Config, ConfigError, stable_hash
from tasks import loops
from tasks.ingest import Dataset
from tasks.progress import Listener, relay
from tasks.runtime import run_training
from tasks.storage import SUCCESS, Storage
from tasks.windows import WindowBatcher, standardize, window_starts

TEACHER_FILE = "teacher.pt"
META_FILE = "teacher.json"


@dataclass(frozen=True)
class Teacher:
    """A trained teacher in storage."""

    directory: str  # relative to the storage root
    key: str
    meta: dict[str, Any]
    cached: bool  # True when an earlier run's teacher was reused

    @property
    def weights_path(self) -> str:
        return f"{self.directory}/{TEACHER_FILE}"

    def build(self) -> torch.nn.Module:
        """The teacher's architecture, untrained (load_teacher fills in the weights)."""
        meta = self.meta
        return models.build_model(meta["name"], lookback=meta["lookback"], horizon=meta["horizon"],
                                  n_vars=meta["n_vars"], **meta["hparams"])


def teacher_key(config: Config, dataset: Dataset, horizon: int) -> str:
    return stable_hash({
        "data": dataset.fingerprint,
        "lookback": config.data.lookback,
        "horizon": horizon,
        "teacher": config.teacher.model_dump(mode="json"),
        "preset": teacher_preset(config),
        "format": 1,
    })[:16]


def teacher_preset(config: Config) -> str:
    return config.teacher.preset or config.data.name


def find_teacher(config: Config, storage: Storage, dataset: Dataset, horizon: int) -> Teacher | None:
    key = teacher_key(config, dataset, horizon)
    directory = f"teachers/{dataset.name}/{key}"
    if not storage.complete(directory):
        return None
    return Teacher(directory, key, storage.read_json(f"{directory}/{META_FILE}"), cached=True)


def load_teacher(storage: Storage, teacher: Teacher, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The frozen teacher in eval mode (weights loaded with weights_only=True)."""
    model = teacher.build()
    state = torch.load(io.BytesIO(storage.read_bytes(teacher.weights_path)), map_location=device,
                       weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_standardized(storage: Storage, dataset: Dataset) -> np.ndarray:
    """The whole series, standardized with the train-split scaler: [T, C] float32."""
    table = storage.read_parquet(dataset.series_path, columns=dataset.variables)
    values = np.column_stack([table.column(name).to_numpy() for name in dataset.variables])
    return standardize(values.astype(np.float64), dataset.manifest["scaler"])


def train_teacher(config: Config, storage: Storage, dataset: Dataset, horizon: int, *,
                  series_ref: ray.ObjectRef | None = None, on_event: Listener | None = None,
                  fault: loops.Fault | None = None) -> Teacher:
    """Train (or reuse) the teacher of one horizon."""
    existing = find_teacher(config, storage, dataset, horizon)
    if existing is not None:
        return existing
    key = teacher_key(config, dataset, horizon)
    hparams = resolved_hparams("teacher", config.teacher.name, config.data.lookback, horizon, len(dataset.variables),
                               teacher_preset(config), config.teacher.params)
    if series_ref is None:
        series_ref = ray.put(load_standardized(storage, dataset))
    with relay(on_event, stage="teacher", horizon=horizon) as events:
        spec = {
            "name": config.teacher.name, "hparams": hparams, "lookback": config.data.lookback,
            "horizon": horizon, "n_vars": len(dataset.variables), "series": series_ref,
            "rows": dataset.manifest["splits"], "teacher": config.teacher.model_dump(),
            "mixed_precision": config.ray.mixed_precision, "events": events, "fault": fault,
        }
        summary, state, ray_run = run_training(teacher_worker, spec, config, storage,
                                               f"teacher-{dataset.name}-h{horizon}-{key}")
    best = state["trainees"]["teacher"]["early"]["best_state"]
    buffer = io.BytesIO()
    torch.save(best, buffer)
    weights = buffer.getvalue()
    meta = {
        "name": config.teacher.name, "hparams": hparams, "dataset": dataset.name,
        "data_fingerprint": dataset.fingerprint, "lookback": config.data.lookback, "horizon": horizon,
        "n_vars": len(dataset.variables), "feature_dim": summary["feature_dim"], "params": summary["params"],
        "val_mse": summary["best_val_mse"], "best_epoch": summary["best_epoch"], "epochs": summary["epochs"],
        "test_mse": summary["test"]["mse"], "test_mae": summary["test"]["mae"],
        "latency_ms": summary["latency_ms"], "device": summary["device"], "resumed_from": summary["resumed_from"],
        "worker_nodes": summary["worker_nodes"], "peak_memory_mb": summary["peak_memory_mb"],
        "history": summary["history"],
        "sha256": hashlib.sha256(weights).hexdigest(), "ray_run": ray_run,
    }
    directory = f"teachers/{dataset.name}/{key}"
    with storage.publish_dir(directory) as staging:
        storage.write_bytes(f"{staging}/{TEACHER_FILE}", weights)
        storage.write_json(f"{staging}/{META_FILE}", meta)
        storage.write_bytes(f"{staging}/{SUCCESS}", b"")
    return Teacher(directory, key, meta, cached=False)


def resolved_hparams(section: str, name: str, lookback: int, horizon: int, n_vars: int, preset: str | None,
                     params: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of a model as it will be built (preset, then overrides), validated
    here in the driver so that a bad value fails before any worker starts."""
    try:
        built = models.build_config(name, lookback=lookback, horizon=horizon, n_vars=n_vars, preset=preset, **params)
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from None
    return {k: v for k, v in dataclasses.asdict(built).items() if k not in ("lookback", "horizon", "n_vars")}


def teacher_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    settings = spec["teacher"]
    torch.manual_seed(settings["seed"])
    # Ray: the series comes from the object store, once per node, shared by its workers
    series = ray.get(spec["series"])
    lookback, horizon = spec["lookback"], spec["horizon"]
    batcher = WindowBatcher(series, lookback, horizon)
    starts = {split: window_starts(tuple(span), lookback, horizon) for split, span in spec["rows"].items()}

    model = models.build_model(spec["name"], lookback=lookback, horizon=horizon, n_vars=spec["n_vars"],
                               **spec["hparams"])
    module = loops.prepare(model)  # Ray: to the device, DDP-wrapped when world > 1

    def loss_fn(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prediction = module(batch["x"]).prediction
        return torch.nn.functional.mse_loss(prediction.float(), batch["y"]), {}

    trainee = loops.Trainee(
        name="teacher", module=module, model=loops.unwrap(module), loss_fn=loss_fn,
        optimizer=torch.optim.Adam(module.parameters(), lr=settings["lr"]), lr=settings["lr"],
        decay=settings["lr_decay"], hold_epochs=1, early=loops.EarlyStopping(settings["patience"]))

    def make_batch(positions: np.ndarray) -> dict[str, torch.Tensor]:
        x, y = batcher(starts["train"][positions])
        return {"x": x.to(device, non_blocking=True), "y": y.to(device, non_blocking=True)}

    epochs, resumed_from = loops.train(
        [trainee], epochs=settings["epochs"], batch_size=settings["batch_size"],
        train_windows=lambda epoch: loops.shard_epoch(len(starts["train"]), rank, world, settings["seed"] + epoch),
        make_batch=make_batch, val_batcher=batcher, val_starts=starts["val"], device=device,
        mixed_precision=spec["mixed_precision"], events=spec["events"], fault=spec["fault"])

    loops.restore_best(trainee)
    test = loops.evaluate(trainee.model, batcher, starts["test"], rank, world, device)
    return {
        "epochs": epochs, "resumed_from": resumed_from, "best_val_mse": trainee.early.best,
        "best_epoch": trainee.early.best_epoch + 1,
        "test": test, "params": trainee.model.num_params(), "feature_dim": trainee.model.feature_dim,
        "latency_ms": loops.latency_ms(trainee.model, batcher, starts["test"], device) if rank == 0 else None,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "history": trainee.history, "worker_nodes": loops.worker_nodes(), "peak_memory_mb": loops.peak_memory_mb(),
    }
