"""A registered student for other programs: a frame (or an array) in the data's units in, a frame
of forecasts with timestamps and variable names out. What `timedistill.load_model` returns,
what `timedistill predict` runs, and how the server dates its forecasts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from timedistill.conf.schema import duration
from timedistill.store.errors import InputError
from timedistill.store.forecaster import ForecastModel
from timedistill.store.records import RegistryEntry
from timedistill.store.registry import read_version
from timedistill.store.storage import Storage

STEP_COLUMN = "step"  # the forecast's step (1..horizon) when there are no timestamps to give
MEDIAN = 0.5  # a quantile model's point forecast: its median level has no column of its own


def quantile_column(variable: str, level: float) -> str:
    """The column of a variable's quantile, beside its forecast: "OT_q0.1"."""
    return f"{variable}_q{level:g}"


@dataclass(frozen=True)
class Predictor:
    entry: RegistryEntry
    forecaster: ForecastModel

    @classmethod
    def load(cls, storage: Storage, name: str, version: str | None = None) -> Predictor:
        entry = read_version(storage, name, version)
        forecaster = ForecastModel.with_scaler(entry.load(storage), entry.scaler, entry.config.lookback,
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
    def quantile_levels(self) -> tuple[float, ...]:
        """The levels its forecasts have quantile columns for: all but the median; () for a point model."""
        return tuple(level for level in self.forecaster.levels if level != MEDIAN)

    @property
    def step(self) -> timedelta | None:
        """The series' time step ("1h" in the registry); None when it is not a plain duration."""
        try:
            return duration(self.entry.config.step)
        except ValueError:
            return None

    def predict(self, data: Any, timestamps: Any = None) -> Any:
        """Forecast `horizon` steps after the last of at least `lookback` rows.

        `data`: a Polars or pandas frame with a column per variable (other columns are ignored;
        the timestamp column, or a pandas DatetimeIndex, dates the forecast), or an array
        [rows, variables] in the registered variables' order, with optional `timestamps` of its
        rows. Returns a frame of the same library (Polars for arrays): the forecast's timestamps
        (or its step, 1..horizon, when there are none), one column per variable and, for a
        quantile model, a column per variable and level besides the median ("OT_q0.1")."""
        values, stamps, is_pandas = self._history(data, timestamps)
        forecast, quantiles = self.forecast(values[None, -self.lookback :])
        frame = self._frame(forecast[0], quantiles, self.forecast_times(stamps[-1] if stamps is not None else None))
        return frame.to_pandas() if is_pandas else frame

    def forecast(self, histories: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """[N, L, C] in data units -> the point forecast [N, S, C] and, for a quantile model, its
        quantiles as flat [N * S] columns by name (`quantile_column`), from one forward pass."""
        if not self.quantile_levels:
            return self.forecaster.forecast(histories), {}
        point, quantiles = self.forecaster.forecast_quantiles(histories)  # [N, Q, S, C]
        return point, {quantile_column(name, level): quantiles[:, q, :, c].reshape(-1)
                       for c, name in enumerate(self.variables)
                       for q, level in enumerate(self.forecaster.levels) if level != MEDIAN}

    def forecast_times(self, last: datetime | None) -> list[datetime] | None:
        if last is None or self.step is None:
            return None
        return forecast_times(last, self.step, self.horizon)

    def _frame(self, forecast: np.ndarray, quantiles: dict[str, np.ndarray],
               times: list[datetime] | None) -> pl.DataFrame:
        first = (pl.Series(self.timestamp_name, times, dtype=pl.Datetime("us")) if times is not None
                 else pl.Series(STEP_COLUMN, np.arange(1, self.horizon + 1)))
        return pl.DataFrame([first, *[pl.Series(name, forecast[:, i]) for i, name in enumerate(self.variables)],
                             *[pl.Series(name, column) for name, column in quantiles.items()]])

    @property
    def timestamp_name(self) -> str:
        return self.entry.config.timestamp or "timestamp"

    def _history(self, data: Any, timestamps: Any) -> tuple[np.ndarray, list[datetime] | None, bool]:
        """(values [T, C] float64, the rows' timestamps or None, whether the input was pandas)."""
        is_pandas = type(data).__module__.split(".")[0] == "pandas"
        if is_pandas:
            index = data.index
            data = pl.from_pandas(data.reset_index() if str(index.dtype).startswith("datetime") else data)
        if isinstance(data, pl.DataFrame):
            missing = [name for name in self.variables if name not in data.columns]
            if missing:
                raise InputError(f"the history has no column {missing[0]!r}; model {self.name} forecasts "
                                 f"{self.variables} (columns: {data.columns})")
            if timestamps is None:
                dated = [c for c in data.columns if data.schema[c].is_temporal()]
                column = self.timestamp_name if self.timestamp_name in dated else (dated[0] if dated else None)
                timestamps = data[column].cast(pl.Datetime("us")).to_list() if column else None
            values = data.select(self.variables).cast(pl.Float64).to_numpy()
        else:
            values = np.asarray(data, dtype=np.float64)
            if values.ndim != 2 or values.shape[1] != len(self.variables):
                raise InputError(f"the history must be [rows, {len(self.variables)}] ({self.variables}), got "
                                 f"{list(values.shape)}")
        if len(values) < self.lookback:
            raise InputError(f"the history has {len(values)} rows; model {self.name} needs at least "
                             f"{self.lookback} (its lookback)")
        if not np.isfinite(values[-self.lookback :]).all():
            raise InputError("the history's last lookback rows hold missing, NaN or infinite values")
        stamps = _timestamps(timestamps, len(values))
        return values, stamps, is_pandas


def forecast_times(last: datetime, step: timedelta, horizon: int) -> list[datetime]:
    """The timestamps of the `horizon` steps after `last`."""
    return [last + step * k for k in range(1, horizon + 1)]


def _timestamps(timestamps: Any, rows: int) -> list[datetime] | None:
    if timestamps is None:
        return None
    stamps = pl.Series(list(timestamps))
    if not stamps.dtype.is_temporal():
        stamps = stamps.cast(pl.String).str.to_datetime(strict=False)
    if len(stamps) != rows or stamps.null_count():
        raise InputError(f"timestamps: expected {rows} parseable timestamps, one per history row")
    return stamps.cast(pl.Datetime("us")).to_list()
