"""A registered student for other programs: a frame (or an array) in the data's units in, a frame
of forecasts with timestamps and variable names out, as the forecast contract says
(store/contract.py). What `timedistill.load_model` returns, what `timedistill predict` runs,
and how the server dates its forecasts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from timedistill.conf.spans import duration
from timedistill.store.contract import (
    LONG_ID,
    Card,
    History,
    Layout,
    check_positional,
    check_times,
    forecast_frame,
    from_frame,
    is_frame,
    to_polars,
)
from timedistill.store.errors import InputError
from timedistill.store.forecaster import ForecastModel
from timedistill.store.records import RegistryEntry
from timedistill.store.registry import read_version
from timedistill.store.storage import Storage
from timedistill.store.weights import load_registered


@dataclass(frozen=True)
class Predictor:
    entry: RegistryEntry
    forecaster: ForecastModel

    @classmethod
    def load(cls, storage: Storage, name: str, version: str | None = None) -> Predictor:
        entry = read_version(storage, name, version)
        forecaster = ForecastModel.with_scaler(load_registered(storage, entry), entry.scaler, entry.config.lookback,
                                               entry.config.horizon)
        return cls(entry, forecaster)

    @property
    def name(self) -> str:
        return self.entry.model

    @property
    def version(self) -> str:
        return self.entry.version

    @property
    def lookback(self) -> int:
        return self.entry.config.lookback

    @property
    def horizon(self) -> int:
        return self.entry.config.horizon

    @property
    def variables(self) -> list[str]:
        return self.entry.config.variables

    @property
    def levels(self) -> tuple[float, ...]:
        """The quantile levels it forecasts (the median among them); () for a point model."""
        return self.forecaster.levels

    @property
    def step(self) -> timedelta | None:
        """The series' time step ("1h" in the registry); None when it is not a plain duration."""
        try:
            return duration(self.entry.config.step)
        except ValueError:
            return None

    @property
    def card(self) -> Card:
        return self.entry.card

    def predict(self, data: Any, timestamps: Any = None, layout: Layout | None = None) -> Any:
        """Forecast `horizon` steps after the last of at least `lookback` rows.

        `data`: a Polars or pandas frame whose columns are matched to the model's variables by
        name (a pandas DatetimeIndex, or the time column, dates the forecast), or a long frame
        (unique_id, ds, y); or an array [rows, variables] whose columns are taken in the model's
        order (`variables`), with optional `timestamps` of its rows. Returns a frame of the same
        library (Polars for arrays), in `layout` (by default the input's): wide, the time column
        (or `step`, 1..horizon, without times) and one column per variable, plus a column per
        variable and level besides the median for a quantile model ("OT_q0.1"); long,
        unique_id, ds, y (and y_q0.1, ...)."""
        history, is_pandas, was_long = self.history(data, timestamps)
        point, quantiles = self.forecast(history.values[None, -self.lookback :])
        levels = None if quantiles is None else {level: quantiles[0, q] for q, level in enumerate(self.levels)}
        times = self.forecast_times(history.times[-1]) if history.times is not None else None
        frame = forecast_frame(point[0], levels, self.variables, times, self.entry.config.timestamp,
                               layout or ("long" if was_long else "wide"))
        return frame.to_pandas() if is_pandas else frame

    def forecast(self, histories: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """[N, L, C] in data units -> the point forecast [N, S, C] and, for a quantile model, its
        quantiles [N, Q, S, C] at `levels`, from one forward pass."""
        if not self.levels:
            return self.forecaster.forecast(histories), None
        return self.forecaster.forecast_quantiles(histories)

    def forecast_times(self, last: datetime | None) -> list[datetime] | None:
        if last is None or self.step is None:
            return None
        return forecast_times(last, self.step, self.horizon)

    def history(self, data: Any, timestamps: Any = None) -> tuple[History, bool, bool]:
        """(the checked history, whether the input was pandas, whether it was a long frame)."""
        card = self.card
        if is_frame(data):
            frame = to_polars(data)
            history = from_frame(frame, card)
            if timestamps is not None:
                if history.times is not None:
                    raise InputError("the history has a time column and timestamps were given too: give them once")
                history = History(history.values, _timestamps(timestamps, len(history.values)), history.ignored)
            is_pandas, was_long = not isinstance(data, pl.DataFrame), LONG_ID in frame.columns
        else:
            values = np.asarray(data, dtype=np.float64)
            check_positional(values, card)
            history, is_pandas, was_long = History(values, _timestamps(timestamps, len(values))), False, False
        if len(history.values) < self.lookback:
            raise InputError(f"the history has {len(history.values)} rows; model {self.name} needs at least "
                             f"{self.lookback} (its lookback)")
        if not np.isfinite(history.values[-self.lookback :]).all():
            raise InputError("the history's last lookback rows hold missing, NaN or infinite values")
        if history.times is not None:
            check_times(history.times, card, self.lookback)
        return history, is_pandas, was_long


def forecast_times(last: datetime, step: timedelta, horizon: int) -> list[datetime]:
    """The timestamps of the `horizon` steps after `last`."""
    return [last + step * k for k in range(1, horizon + 1)]


def _timestamps(timestamps: Any, rows: int) -> list[datetime] | None:
    """Timestamps given beside an array, one per row, as datetimes."""
    if timestamps is None:
        return None
    stamps = pl.Series(list(timestamps))
    if not stamps.dtype.is_temporal():
        stamps = stamps.cast(pl.String).str.to_datetime(strict=False)
    if len(stamps) != rows or stamps.null_count():
        raise InputError(f"timestamps: expected {rows} parseable timestamps, one per history row")
    return stamps.cast(pl.Datetime("us")).to_list()
