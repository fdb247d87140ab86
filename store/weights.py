"""Forecasters from their records: a spec resolved from the config and the model file's presets,
the untrained model it describes, and the weights saved as a plain state dict (no pickled code),
read back with `weights_only=True` into that architecture."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import torch

from timedistill import models
from timedistill.conf import ConfigError
from timedistill.models import Forecaster
from timedistill.store.records import ModelSpec, RegistryEntry, Role, StudentsRun, Teacher
from timedistill.store.storage import Storage

WINDOW = ("lookback", "horizon", "n_vars")  # a spec's window: fields of its own, not hyperparameters


def resolve_spec(section: str, name: str, *, lookback: int, horizon: int, n_vars: int, preset: str | None,
                 params: dict[str, Any], quantiles: list[float] | None = None) -> ModelSpec:
    """The spec as it will be built (the model file's preset, then the config's params),
    validated in the driver so that a bad value fails, naming the config section, before any
    worker starts."""
    try:
        built = models.build_config(name, lookback=lookback, horizon=horizon, n_vars=n_vars, preset=preset, **params)
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from None
    hparams = {key: value for key, value in dataclasses.asdict(built).items() if key not in WINDOW}
    return ModelSpec(name=name, lookback=lookback, horizon=horizon, n_vars=n_vars, hparams=hparams,
                     quantiles=quantiles or [])


def build_forecaster(spec: ModelSpec) -> Forecaster:
    """The forecaster, untrained (the point model first, so that a seed gives it the same weights
    with or without quantiles)."""
    model = models.build_model(spec.name, lookback=spec.lookback, horizon=spec.horizon, n_vars=spec.n_vars,
                               **spec.hparams)
    return models.QuantileStudent(model, spec.quantiles) if spec.quantiles else model


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def read_state(storage: Storage, path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location=device, weights_only=True)


def load_forecaster(storage: Storage, path: str, spec: ModelSpec, device: str | torch.device = "cpu") -> Forecaster:
    """The forecaster `spec` describes, with the weights at `path`, on `device`, in eval mode."""
    model = build_forecaster(spec)
    model.load_state_dict(read_state(storage, path, device))
    return model.to(device).eval()


def load_teacher(storage: Storage, teacher: Teacher, device: str | torch.device = "cpu") -> Forecaster:
    """A trained teacher, frozen, in eval mode."""
    model = load_forecaster(storage, teacher.weights_path, teacher.spec, device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_trained(storage: Storage, run: StudentsRun, role: Role, device: str | torch.device = "cpu") -> Forecaster:
    """A run's distilled student or its baseline."""
    return load_forecaster(storage, run.weights_path(role), run.spec(role), device)


def load_registered(storage: Storage, entry: RegistryEntry, device: str | torch.device = "cpu") -> Forecaster:
    """A registered version's student."""
    return load_forecaster(storage, entry.weights_path, entry.config.spec, device)
