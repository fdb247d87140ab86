"""A student ready to forecast in the units of the data: standardize the history with the scaler
it was trained with, predict, invert. Plain Python and PyTorch, so that Ray Serve replicas, the
bare benchmark server, the champion/challenger gate, the drift monitor and tests all use exactly
this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from timedistill.models import QuantileStudent
from timedistill.store.errors import BrokenVersion, RegistryError, one_line
from timedistill.store.records import RegistryEntry
from timedistill.store.registry import check_version, read_entry, read_version
from timedistill.store.scaler import Scaler
from timedistill.store.storage import Storage
from timedistill.store.weights import load_registered


@dataclass(frozen=True)
class ForecastModel:
    model: torch.nn.Module  # in eval mode
    mean: np.ndarray  # [C], of the scaler the model was trained with
    std: np.ndarray  # [C]
    lookback: int
    horizon: int

    @classmethod
    def from_registry(cls, storage: Storage, name: str, version: str | None = None) -> ForecastModel:
        entry = read_version(storage, name, version)
        return cls.with_scaler(load_registered(storage, entry), entry.scaler, entry.config.lookback,
                               entry.config.horizon)

    @classmethod
    def with_scaler(cls, model: torch.nn.Module, scaler: Scaler, lookback: int, horizon: int) -> ForecastModel:
        return cls(model=model, mean=np.asarray(scaler.mean, dtype=np.float64),
                   std=np.asarray(scaler.std, dtype=np.float64), lookback=lookback, horizon=horizon)

    def probe(self) -> None:
        """Answer once, from a history at the scaler's mean: raises when the model cannot."""
        forecast = self.forecast(np.broadcast_to(self.mean, (1, self.lookback, len(self.mean))).copy())
        if forecast.shape[1:] != (self.horizon, len(self.mean)) or not np.isfinite(forecast).all():
            raise ValueError(f"its forecast of a plain history is {'not finite' if forecast.size else 'empty'} "
                             f"(shape {list(forecast.shape)})")

    @property
    def levels(self) -> tuple[float, ...]:
        """The quantile levels it forecasts besides the point (student.quantiles); () for none."""
        return getattr(self.model, "levels", ())

    @torch.inference_mode()
    def forecast(self, histories: np.ndarray) -> np.ndarray:
        """[N, L, C] in data units -> [N, S, C] in data units."""
        z = ((histories - self.mean) / self.std).astype(np.float32)
        prediction = self.model(torch.from_numpy(z)).prediction.double().numpy()
        return np.ascontiguousarray(prediction * self.std + self.mean)

    @torch.inference_mode()
    def forecast_quantiles(self, histories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N, L, C] in data units -> the point [N, S, C] and the calibrated quantiles at `levels`
        [N, Q, S, C], in data units, from one forward pass. A model without quantiles raises."""
        if not isinstance(self.model, QuantileStudent):
            raise ValueError("this model forecasts no quantiles (its run had no student.quantiles)")
        z = ((histories - self.mean) / self.std).astype(np.float32)
        forecast, quantiles = self.model.quantiles(torch.from_numpy(z))
        point = forecast.prediction.double().numpy() * self.std + self.mean
        return np.ascontiguousarray(point), np.ascontiguousarray(quantiles.double().numpy() * self.std + self.mean)


def load_verified(storage: Storage, name: str, version: str) -> tuple[RegistryEntry, ForecastModel]:
    """A registered version as a server accepts it: its files read, its weights load into its
    architecture and it answers a probe. What serving checks before it answers with a version,
    and what `models rollback` checks before LATEST moves. A version that is not registered
    raises RegistryError; one that cannot be served, BrokenVersion naming why."""
    return load_probed(storage, name, version, lambda: read_version(storage, name, version))


def load_listed(storage: Storage, name: str, version: str) -> tuple[RegistryEntry, ForecastModel]:
    """`load_verified` of a version its caller has just seen complete in the registry's listing
    (`list_model`, or the digest of its files): no second listing, only the reads of its files."""
    folder = f"registry/{name}/{check_version(name, version)}"
    return load_probed(storage, name, version, lambda: read_entry(storage, name, version, folder))


def load_probed(storage: Storage, name: str, version: str,
                read: Callable[[], RegistryEntry]) -> tuple[RegistryEntry, ForecastModel]:
    """The entry `read` returns and its model, loaded and probed; BrokenVersion naming the step
    that failed (RegistryError from `read` passes: the version is not registered)."""
    try:
        entry = read()
    except RegistryError:
        raise
    except Exception as exc:  # a truncated or unreadable file of a complete version
        raise BrokenVersion(name, version, f"its files do not read: {one_line(exc)}") from None
    try:
        model = ForecastModel.with_scaler(load_registered(storage, entry), entry.scaler, entry.config.lookback,
                                          entry.config.horizon)
        model.probe()
    except Exception as exc:
        raise BrokenVersion(name, version, f"it does not load and answer: {one_line(exc)}") from None
    return entry, model
