"""The one way a forecaster's weights are saved and loaded: a plain state dict (no pickled code),
read back with `weights_only=True` into the architecture its record describes."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import torch
from torch import nn

from timedistill.store.storage import Storage

if TYPE_CHECKING:
    from timedistill.store.records import ModelSpec


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def read_state(storage: Storage, path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location=device, weights_only=True)


def load_forecaster(storage: Storage, path: str, spec: ModelSpec, device: str | torch.device = "cpu") -> nn.Module:
    """The forecaster `spec` describes, with the weights at `path`, on `device`, in eval mode."""
    model = spec.build()
    model.load_state_dict(read_state(storage, path, device))
    return model.to(device).eval()
