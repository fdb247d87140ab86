"""An ingested series as arrays: what the steps that train, score and plot read of a dataset."""

from __future__ import annotations

import numpy as np

from timedistill.store.records import Dataset
from timedistill.store.storage import Storage


def series_values(storage: Storage, dataset: Dataset) -> np.ndarray:
    """The whole series in data units: [T, C] float64."""
    table = storage.read_parquet(dataset.series_path, columns=dataset.variables)
    return np.column_stack([table.column(name).to_numpy() for name in dataset.variables]).astype(np.float64)


def series_timestamps(storage: Storage, dataset: Dataset) -> np.ndarray:
    """The time of every row: [T] datetime64[us]."""
    return storage.read_parquet(dataset.series_path, columns=[dataset.timestamp]).column(0).to_numpy()


def standardized_series(storage: Storage, dataset: Dataset) -> np.ndarray:
    """The whole series, standardized with the train-split scaler: [T, C] float32."""
    return dataset.scaler.standardize(series_values(storage, dataset))
