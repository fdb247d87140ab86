"""Drift: how a registered model does on the windows whose truth arrived after the data it was
trained on, against how it did when it was registered.

Both numbers are MSEs in the model's own standardized space (its scaler), over every element of
every window, so their ratio says how much worse (or better) the model has become; above
`monitor.threshold` that is drift.
"""

from __future__ import annotations

import numpy as np

from timedistill.conf import Config
from timedistill.store.forecaster import ForecastModel
from timedistill.store.record import Record
from timedistill.store.records import SERIES, Dataset
from timedistill.store.registry import RegistryError, read_version
from timedistill.store.series import series_timestamps, series_values
from timedistill.store.storage import Storage
from timedistill.tasks.evaluate import score_windows
from timedistill.tasks.ingest import ingest


class DriftReport(Record):
    """One registered model's drift check (`timedistill monitor --json` prints one per model)."""

    model: str
    version: str | None
    windows: int  # windows whose truth arrived after the data the model was trained on
    mse_recent: float | None
    mse_at_registration: float | None
    ratio: float | None  # mse_recent / mse_at_registration
    drift: bool | None  # None: no verdict, the reason says why
    reason: str
    retrain: str | None = None  # what a drift started (--trigger)

    def describe(self) -> str:
        verdict = {True: "drift", False: "no drift", None: "no verdict"}[self.drift]
        return f"{self.model} {self.version or '-'}: {verdict}, {self.reason}"


def check_models(config: Config, storage: Storage) -> tuple[Dataset, list[DriftReport]]:
    """Ingest the newest data, and check the model of every configured horizon on it."""
    dataset = ingest(config, storage)
    return dataset, [check_drift(config, storage, dataset, horizon) for horizon in config.data.horizons]


def check_drift(config: Config, storage: Storage, dataset: Dataset, horizon: int) -> DriftReport:
    """Score the LATEST version of the config's model for `horizon` on the newest data."""
    name = config.model_name(horizon)

    def no_verdict(reason: str, version: str | None = None, windows: int = 0) -> DriftReport:
        return DriftReport(model=name, version=version, windows=windows, mse_recent=None, mse_at_registration=None,
                           ratio=None, drift=None, reason=reason)

    try:
        entry = read_version(storage, name)
    except RegistryError as exc:
        return no_verdict(str(exc))
    registered = entry.config
    if registered.variables != dataset.variables:
        return no_verdict(f"it forecasts {registered.variables}, the data has {dataset.variables}", entry.version)
    trained_on = f"datasets/{registered.dataset}/{registered.data_fingerprint}/{SERIES}"
    if not storage.exists(trained_on):
        return no_verdict(f"the data it was trained on ({storage.uri(trained_on)}) is gone", entry.version)
    stamps = storage.read_parquet(trained_on).column(0)  # the time column comes first
    trained_until = np.datetime64(stamps[len(stamps) - 1].as_py())
    timestamps = series_timestamps(storage, dataset)
    lookback, horizon = registered.lookback, registered.horizon
    starts = np.arange(max(len(timestamps) - lookback - horizon + 1, 0))
    starts = starts[timestamps[starts + lookback] > trained_until]  # the whole forecast is new truth
    if len(starts) < config.monitor.min_windows:
        return no_verdict(f"{len(starts)} window(s) with truth after {trained_until}, fewer than "
                          f"monitor.min_windows ({config.monitor.min_windows})", entry.version, len(starts))
    model = ForecastModel.from_registry(storage, name, entry.version)
    recent = score_windows(model, series_values(storage, dataset), starts, entry.scaler)
    at_registration = entry.metrics.student.test_mse
    ratio = recent / at_registration
    drift = ratio > config.monitor.threshold
    reason = (f"recent MSE {recent:.4f} is {ratio:.2f}x the {at_registration:.4f} at registration, "
              f"{'above' if drift else 'within'} monitor.threshold {config.monitor.threshold}")
    return DriftReport(model=name, version=entry.version, windows=len(starts), mse_recent=recent,
                       mse_at_registration=at_registration, ratio=ratio, drift=drift, reason=reason)
