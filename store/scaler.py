"""The train-split scaler: what the series is standardized with before any model sees it, and
what a forecast is turned back into data units with. It travels with the weights (a registered
version's scaler.json), so that serving inverts exactly what training applied."""

from __future__ import annotations

import numpy as np

from timedistill.store.record import Record


class Scaler(Record):
    """Per-variable mean and standard deviation of the train split (ddof=0, as sklearn's
    StandardScaler); a constant variable has std 1 (centred, not divided by zero)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        """From the train rows [T, C] (float64)."""
        std = values.std(axis=0)
        return cls(mean=tuple(values.mean(axis=0).tolist()), std=tuple(np.where(std > 0, std, 1.0).tolist()))

    def standardize(self, values: np.ndarray) -> np.ndarray:
        """(values - mean) / std, as one C-contiguous float32 array."""
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        return np.ascontiguousarray(((values - mean) / std).astype(np.float32))

    def unstandardize(self, values: np.ndarray) -> np.ndarray:
        """values * std + mean, in float64."""
        return values * np.asarray(self.std, np.float64) + np.asarray(self.mean, np.float64)

    def describe(self) -> str:
        return f"scaler of {len(self.mean)} variables"


class NamedScaler(Scaler):
    """A registered version's scaler.json: the scaler with the variables it belongs to."""

    variables: list[str]
