"""Offline forecasts from a registered student (`timedistill predict`): read and validate a series
as ingestion does, forecast from its last window or from every origin of a range (a backtest),
and write the forecasts, dated and named, to Parquet.

The file is read with the config's reading settings (time format, missing values, duplicates,
alignment of a long file's ids) and none of its training ones: every row of it counts, whatever
data.max_rows says. Its columns are matched to the model's variables by name, as the forecast
contract says (store/contract.py); the time column is the model's, where the file has it.

An origin is the time of the last history row a forecast starts from. Up to IN_PROCESS_ORIGINS
origins are forecast in the command's own process (no cluster: most backtests take less time than
Ray takes to start); more, or any number when a Ray cluster is named (--ray-address, ray.address,
$RAY_ADDRESS), are spread over Ray with Ray Data's `map_batches`, each actor holding the model
once (BENCHMARKS.md, "Light commands", measures where that pays off). Where the truth of a
forecast is in the file, it is scored (MSE and MAE in the model's standardized space,
the scale of its registered test scores). A quantile model's quantiles come out beside its forecast
(a column per variable and level, "OT_q0.1"; in the long layout a column per level, "y_q0.1");
the scores are the point forecast's.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from timedistill.conf import Config
from timedistill.store.contract import LONG_ID, LONG_TIME, LONG_VALUE, MEDIAN, STEP_COLUMN, from_frame, quantile_column
from timedistill.store.errors import InputError
from timedistill.store.predictor import Predictor
from timedistill.store.record import Record
from timedistill.store.storage import Storage
from timedistill.tasks.ingest import parse_series
from timedistill.tasks.reading import read_source
from timedistill.tasks.runtime import ray_address as cluster_address
from timedistill.tasks.runtime import ray_session
from timedistill.tasks.values import format_step
from timedistill.tasks.windows import WindowBatcher

ORIGIN = "origin"
# Up to this many origins are forecast in the command's process: on a machine of a few cores a Ray
# Data pool only pays for its start (a local Ray, a job, its actors loading the model) beyond it
# (BENCHMARKS.md, "Light commands")
IN_PROCESS_ORIGINS = 100_000
BATCH = 256  # origins per actor call (the Ray Data path); each forward takes batcher.inference_batch
Engine = Literal["process", "ray"]
SCORES = ["mse", "mae", "squares", "absolutes", "count"]  # per origin, where its truth is known
Layout = Literal["wide", "long"]


class Predictions(Record):
    """What `timedistill predict` wrote."""

    model: str
    version: str
    origins: int
    rows: int
    output: str
    layout: str
    scored: int  # origins whose whole forecast has its truth in the input
    mse: float | None  # over every scored element (the model's standardized space)
    mae: float | None
    scores_output: str | None  # per-origin MSE and MAE
    source_rows: int  # rows of the input series, all of them read
    first_origin: str
    last_origin: str
    found: str | None  # what was read off the file (its time column, its layout)
    ignored_columns: list[str]  # the file's columns that the model's training data ignored too
    engine: Engine  # where the forecasts were computed: this process, or a Ray Data pool

    def describe(self) -> str:
        scores = f"; MSE {self.mse:.4f}, MAE {self.mae:.4f} over {self.scored} origin(s) with truth" if self.scored \
            else ""
        span = self.last_origin if self.origins == 1 else f"{self.first_origin} to {self.last_origin}"
        ignored = f"; ignored {', '.join(self.ignored_columns)} (as in training)" if self.ignored_columns else ""
        return (f"{self.model} {self.version}: {self.origins} origin(s) ({span}) of a {self.source_rows}-row series"
                f"{ignored}, {self.rows} rows in {self.output}{scores}")


def origin_rows(spec: str, timestamps: pl.Series, lookback: int) -> np.ndarray:
    """`last`, `all` or `FROM:TO` (timestamps, either side may be empty) as the indices of the
    rows right after each origin (a history is the `lookback` rows before that index)."""
    ends = np.arange(lookback, len(timestamps) + 1)  # every position a full history ends before
    if spec == "last":
        return ends[-1:]
    if spec == "all":
        return ends
    bounds = split_range(spec)
    origin_times = timestamps.gather(ends - 1)  # the last history row of each
    keep = np.ones(len(ends), bool)
    for bound, side in zip(bounds, ("from", "to"), strict=True):
        if bound is not None:
            bound = bound.cast(timestamps.dtype)
            keep &= (origin_times >= bound if side == "from" else origin_times <= bound).to_numpy()
    if not keep.any():
        raise InputError(f"--origins {spec!r}: no origin with a full history of {lookback} rows in that range "
                         f"({timestamps[lookback - 1]} to {timestamps[-1]})")
    return ends[keep]


def split_range(spec: str) -> tuple[pl.Series | None, pl.Series | None]:
    """FROM:TO where either side may be empty and times hold colons themselves
    (2018-01-01 06:00:2018-02-01): the split at a colon whose both sides parse."""
    for index in [i for i, char in enumerate(spec) if char == ":"]:
        sides = spec[:index].strip(), spec[index + 1 :].strip()
        try:
            parsed = [pl.Series([side]).str.to_datetime() if side else None for side in sides]
        except pl.exceptions.PolarsError:
            continue
        return parsed[0], parsed[1]
    raise InputError(f"--origins {spec!r}: expected last, all, or FROM:TO with timestamps, e.g. "
                     "2018-01-01:2018-02-01")


def predict(config: Config, storage: Storage, name: str, version: str | None, source: str, output: Storage,
            output_name: str, origins: str = "last", layout: Layout = "wide", *, engine: Engine | None = None,
            ray_address: str | None = None, quiet: bool = True) -> Predictions:
    """Forecast from every chosen origin of `source` and write the forecasts (and the scores, when
    there is truth) as Parquet under `output`: in this process, or on Ray for many origins or a
    named cluster (module docstring); `engine` decides instead."""
    predictor = Predictor.load(storage, name, version)
    data = config.data.model_copy(update={"path": source, "max_rows": None, "columns": None, "target": None})
    series = parse_series(read_source(source, config.storage.endpoint_override), data,
                          time_hint=predictor.entry.config.timestamp)
    if predictor.step is not None and series.step != predictor.step:
        raise InputError(f"{source}: its step is {format_step(series.step)}; model {predictor.name} forecasts steps "
                         f"of {predictor.entry.config.step}")
    history = from_frame(series.frame, predictor.card)
    timestamps = series.frame[series.layout.timestamp]
    ends = origin_rows(origins, timestamps, predictor.lookback)
    if engine is None:
        named = cluster_address(config, ray_address) is not None
        engine = "ray" if len(ends) > IN_PROCESS_ORIGINS or named else "process"
    if engine == "process":
        rows = forecast_origins(predictor, history.values, timestamps, ends)
    else:
        with ray_session(config, ray_address, quiet=quiet):
            rows = spread(storage, predictor, history.values, timestamps, ends)
    scores = (rows.filter(pl.col("count").is_not_null()).group_by(ORIGIN, maintain_order=True)
              .agg(pl.col(SCORES).first()).sort(ORIGIN))
    forecasts = rows.drop(SCORES).sort(ORIGIN, STEP_COLUMN)
    time_column = forecasts.columns[1]
    if layout == "long":  # a row per variable: unique_id, ds, y and a column per quantile level (y_q0.1)
        levels = {quantile_column(LONG_VALUE, level): pl.concat([forecasts[quantile_column(name, level)]
                                                                 for name in predictor.variables])
                  for level in predictor.levels if level != MEDIAN}
        forecasts = (forecasts.rename({time_column: LONG_TIME})
                     .unpivot(index=[ORIGIN, LONG_TIME, STEP_COLUMN], on=predictor.variables, variable_name=LONG_ID,
                              value_name=LONG_VALUE)
                     .with_columns(**levels).select(ORIGIN, LONG_ID, LONG_TIME, STEP_COLUMN, LONG_VALUE, *levels))
    output.write_parquet(output_name, forecasts.to_arrow())
    scores_name = None
    if scores.height:
        scores_name = output_name.removesuffix(".parquet") + ".scores.parquet"
        output.write_parquet(scores_name, scores.select(ORIGIN, "mse", "mae").to_arrow())
    count = int(scores["count"].sum()) if scores.height else 0
    return Predictions(
        model=predictor.name, version=predictor.version, origins=len(ends), rows=forecasts.height,
        output=output.uri(output_name), layout=layout, scored=scores.height,
        mse=float(scores["squares"].sum()) / count if count else None,
        mae=float(scores["absolutes"].sum()) / count if count else None,
        scores_output=output.uri(scores_name) if scores_name else None, source_rows=len(timestamps),
        first_origin=str(timestamps[int(ends[0]) - 1]), last_origin=str(timestamps[int(ends[-1]) - 1]),
        found=series.layout.found, ignored_columns=list(history.ignored), engine=engine)


def forecast_origins(predictor: Predictor, values: np.ndarray, timestamps: pl.Series,
                     ends: np.ndarray) -> pl.DataFrame:
    """A forecast row per origin and step; each origin's rows carry its scores (null where its
    truth is past the end of the series)."""
    lookback, horizon = predictor.lookback, predictor.horizon
    padded = np.concatenate([values, np.full((horizon, values.shape[1]), np.nan)])  # truth past the end: unknown
    batcher = WindowBatcher(padded, lookback, horizon)
    std = np.asarray(predictor.entry.scaler.std)
    step, time_column = predictor.step, predictor.entry.config.timestamp or timestamps.name
    stamp = (pl.col(ORIGIN) + pl.duration(microseconds=pl.col(STEP_COLUMN) * (step // timedelta(microseconds=1)))
             if step else pl.lit(None, dtype=timestamps.dtype))  # each forecast row's time
    frames, batch_size = [], batcher.inference_batch
    for begin in range(0, len(ends), batch_size):
        chunk = ends[begin : begin + batch_size]
        x, truth = batcher(chunk - lookback)
        history = x.numpy()
        if not np.isfinite(history).all():
            raise InputError("a history holds missing or infinite values")
        forecast, quantile_values = predictor.forecast(history)  # [B, S, C], [B, Q, S, C] or None
        error = (forecast - truth.numpy()) / std  # [B, S, C]; NaN where the truth is past the end
        known = np.isfinite(error).all(axis=(1, 2))  # [B]
        elements = horizon * values.shape[1]
        squares = np.where(known, np.square(error).sum(axis=(1, 2)), np.nan)
        absolutes = np.where(known, np.abs(error).sum(axis=(1, 2)), np.nan)
        origins = timestamps.gather(chunk - 1)  # [B]
        steps = np.arange(1, horizon + 1)
        quantiles = {} if quantile_values is None else {  # [B, S] -> [B*S] per variable and level
            quantile_column(name, level): quantile_values[:, q, :, c].reshape(-1)
            for c, name in enumerate(predictor.variables) for q, level in enumerate(predictor.levels)
            if level != MEDIAN}
        frame = pl.DataFrame({
            ORIGIN: origins.gather(np.repeat(np.arange(len(chunk)), horizon)),  # [B*S]
            STEP_COLUMN: np.tile(steps, len(chunk)),
            **{name: forecast[:, :, c].reshape(-1) for c, name in enumerate(predictor.variables)},  # [B, S] -> [B*S]
            **quantiles,
            "mse": np.repeat(squares / elements, horizon), "mae": np.repeat(absolutes / elements, horizon),
            "squares": np.repeat(squares, horizon), "absolutes": np.repeat(absolutes, horizon),
            "count": np.repeat(np.where(known, elements, 0), horizon),
        })
        frames.append(frame.with_columns(stamp.alias(time_column), pl.col("count").replace(0, None))
                      .fill_nan(None).select(ORIGIN, time_column, STEP_COLUMN, *predictor.variables, *quantiles,
                                             *SCORES))
    return pl.concat(frames, how="vertical")


class OriginForecaster:
    """A Ray Data actor: the model loaded once, the series from the object store."""

    def __init__(self, storage: Storage, name: str, version: str, values: np.ndarray,
                 timestamps: pl.Series) -> None:
        self.predictor = Predictor.load(storage, name, version)
        self.values, self.timestamps = values, timestamps

    def __call__(self, batch: pa.Table) -> pa.Table:
        return forecast_origins(self.predictor, self.values, self.timestamps, batch["end"].to_numpy()).to_arrow()


def spread(storage: Storage, predictor: Predictor, values: np.ndarray, timestamps: pl.Series,
           ends: np.ndarray) -> pl.DataFrame:
    """Ray: the origins in batches over a pool of actors, as many as the cluster has CPUs."""
    import ray
    import ray.data

    actors = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    tables = (
        ray.data.from_arrow(pa.table({"end": ends}))
        .map_batches(OriginForecaster, batch_size=BATCH, batch_format="pyarrow",
                     fn_constructor_kwargs={"storage": storage, "name": predictor.name, "version": predictor.version,
                                            "values": values, "timestamps": timestamps},
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors), num_cpus=1)
        .to_arrow_refs()
    )
    return pl.concat([pl.DataFrame(table) for table in ray.get(tables)])
