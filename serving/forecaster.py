"""A registered student, ready to forecast in the units of the data: standardize the history
with the scaler it was trained with, predict, invert. Plain Python and PyTorch, so that Ray Serve
replicas, the bare benchmark server and tests all use exactly this."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from store.records import RegistryEntry
from store.registry import read_version
from store.storage import Storage


@dataclass
class ForecastModel:
    entry: RegistryEntry
    model: torch.nn.Module
    mean: np.ndarray  # [C]
    std: np.ndarray  # [C]

    @classmethod
    def from_registry(cls, storage: Storage, name: str, version: str | None = None) -> ForecastModel:
        entry = read_version(storage, name, version)
        return cls(entry=entry, model=entry.load(storage), mean=np.asarray(entry.scaler.mean, dtype=np.float64),
                   std=np.asarray(entry.scaler.std, dtype=np.float64))

    @torch.inference_mode()
    def forecast(self, histories: np.ndarray) -> np.ndarray:
        """[N, L, C] in data units -> [N, S, C] in data units."""
        z = ((histories - self.mean) / self.std).astype(np.float32)
        prediction = self.model(torch.from_numpy(z)).prediction.double().numpy()
        return np.ascontiguousarray(prediction * self.std + self.mean)
