"""The forecast contract: how a history becomes a model's input and how its forecast is named, the
same for `load_model(...).predict`, the Python client, `timedistill predict` and the HTTP API.

In: a history given as a frame (Polars, pandas, or JSON with column names) is matched to the
model's variables by name, in any column order. Its time column is the one named as in the
model's data (its card) or the one column of a date type; text in it is read as dates. A
missing variable, or an extra column the model's training data did not have (one that could be
a variable under another name), is an error naming them; so are times out of order or spaced
otherwise than the model's step. A frame with `unique_id, ds, y` columns is a long history (one
series per variable). A bare array has no names: its columns are taken in the model's order.

Out: wide, the data's time column (or `step`, 1..horizon, when the history had no times) and a
column per variable, and for a quantile model a column per variable and level besides the
median (`OT_q0.1`); long, `unique_id, ds, y` and a column per level (`y_q0.1`).

Plain Polars and NumPy (no torch), so that the client can share it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import polars as pl

from timedistill.store.errors import InputError

Layout = Literal["wide", "long"]
STEP_COLUMN = "step"  # the forecast's step (1..horizon) when there are no times to give
LONG_ID, LONG_TIME, LONG_VALUE = "unique_id", "ds", "y"  # a long frame's columns, as forecasting tools name them
WIDE_TIME = "timestamp"  # a wide forecast's time column when the model's data did not name one
MEDIAN = 0.5  # a quantile model's point forecast: its median level has no column of its own
SHOWN = 80  # characters of a value echoed in an error


def quantile_column(variable: str, level: float) -> str:
    """The column of a variable's quantile, beside its forecast: "OT_q0.1"."""
    return f"{variable}_q{level:g}"


@dataclass(frozen=True)
class Card:
    """What a model says about its input: enough to match a history to it."""

    model: str
    variables: list[str]
    time_column: str | None  # the time column of its data
    step: timedelta | None  # its data's step; None when not a plain duration
    ignored_columns: tuple[str, ...] = ()  # columns its training data had and did not read


@dataclass(frozen=True)
class History:
    """A history as the model takes it."""

    values: np.ndarray  # [T, C] float64, columns in the model's order
    times: list[datetime] | None  # of each row, when the history had them
    ignored: tuple[str, ...] = ()  # columns dropped because the model's training data ignored them too


def is_frame(data: Any) -> bool:
    """A Polars or pandas frame (named columns), as opposed to an array."""
    return isinstance(data, pl.DataFrame) or type(data).__module__.split(".")[0] == "pandas"


def to_polars(data: Any) -> pl.DataFrame:
    """A Polars frame of a Polars or pandas one; a pandas DatetimeIndex becomes a column."""
    if isinstance(data, pl.DataFrame):
        return data
    index = data.index
    if str(index.dtype).startswith("datetime"):
        data = data.reset_index()
    return pl.from_pandas(data)


def from_frame(frame: pl.DataFrame, card: Card) -> History:
    """The history of a frame, matched to the model by name (module docstring)."""
    if {LONG_ID, LONG_TIME, LONG_VALUE} <= set(frame.columns):
        frame = _pivot(frame, card)
    time_column = _time_column(frame, card)
    extra = [name for name in frame.columns if name not in card.variables and name != time_column]
    unknown = [name for name in extra if name not in card.ignored_columns]
    missing = [name for name in card.variables if name not in frame.columns]
    if missing or unknown:
        problems = []
        if missing:
            problems.append("it lacks " + ", ".join(f"{name!r}{_close(name, unknown)}" for name in missing))
        if unknown:
            verb = "is not a variable" if len(unknown) == 1 else "are not variables"
            problems.append(f"{', '.join(map(repr, unknown))} {verb} of the model")
        raise InputError(f"the history does not match model {card.model}, which forecasts {card.variables}: "
                         f"{'; '.join(problems)}")
    values = np.column_stack([_numbers(frame[name]) for name in card.variables]) if frame.height else \
        np.empty((0, len(card.variables)))
    times = _times(frame[time_column]) if time_column is not None else None
    return History(values=values, times=times, ignored=tuple(name for name in extra if name not in unknown))


def from_json_columns(history: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """A history sent as JSON with names: an object of columns ({"date": [...], "OT": [...]}) or
    a list of records ([{"date": ..., "OT": ...}, ...])."""
    try:
        if isinstance(history, Mapping):
            lengths = {len(values) for values in history.values()}
            if len(lengths) > 1:
                raise InputError(f"history: its columns have different lengths ({sorted(lengths)})")
            return pl.DataFrame({name: pl.Series(name, values, strict=False) for name, values in history.items()})
        names = list(dict.fromkeys(name for record in history for name in record))
        return pl.DataFrame({name: pl.Series(name, [record.get(name) for record in history], strict=False)
                             for name in names})
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise InputError(f"history: not a table of named columns ({' '.join(str(exc).split())[:SHOWN]})") from None


def check_positional(values: np.ndarray, card: Card) -> None:
    """A bare array: its columns can only be taken in the model's order; their number must match."""
    if values.ndim != 2 or values.shape[1] != len(card.variables):
        raise InputError(f"the history must be [rows, {len(card.variables)}] with columns in the order "
                         f"{card.variables}, got {list(values.shape)}")


def check_times(times: list[datetime], card: Card, last: int) -> None:
    """The last `last` rows' times must increase by the model's step: a history in another order
    or at another frequency would be forecast from the wrong rows."""
    stamps = pl.Series(times[-last:], dtype=pl.Datetime("us"))
    if stamps.len() < 2:
        return
    first = len(times) - stamps.len()  # where `stamps` begin in `times`
    gaps = stamps.diff().slice(1)
    backwards = (gaps <= timedelta(0)).arg_true()
    if len(backwards):  # named by the times as given: in UTC, one may be before the year 1
        row = first + int(backwards[0]) + 1
        raise InputError(f"the history's times are not in increasing order: row {row} ({times[row]}) comes after "
                         f"{times[row - 1]}; sort it oldest first")
    if card.step is not None:
        other = (gaps != card.step).arg_true()
        if len(other):
            index = int(other[0]) + 1
            raise InputError(f"the history's times are {gaps[int(other[0])]} apart at {times[first + index]}; model "
                             f"{card.model} forecasts steps of {card.step} (fill gaps before forecasting)")


def forecast_frame(point: np.ndarray, quantiles: dict[float, np.ndarray] | None, variables: list[str],
                   times: list[datetime] | None, time_column: str | None, layout: Layout = "wide") -> pl.DataFrame:
    """One forecast as a frame: point [S, C] and quantiles {level: [S, C]} named as the module
    docstring says."""
    horizon = point.shape[0]
    bounds = {level: values for level, values in (quantiles or {}).items() if level != MEDIAN}
    if layout == "wide":
        first = (pl.Series(time_column or WIDE_TIME, times, dtype=pl.Datetime("us")) if times is not None
                 else pl.Series(STEP_COLUMN, np.arange(1, horizon + 1)))
        return pl.DataFrame([first, *[pl.Series(name, point[:, c]) for c, name in enumerate(variables)],
                             *[pl.Series(quantile_column(name, level), values[:, c])
                               for c, name in enumerate(variables) for level, values in bounds.items()]])
    when = (pl.Series(LONG_TIME, times * len(variables), dtype=pl.Datetime("us")) if times is not None
            else pl.Series(STEP_COLUMN, np.tile(np.arange(1, horizon + 1), len(variables))))
    return pl.DataFrame([  # one series after another: [S, C] -> [C * S]
        pl.Series(LONG_ID, np.repeat(variables, horizon)), when, pl.Series(LONG_VALUE, point.T.reshape(-1)),
        *[pl.Series(quantile_column(LONG_VALUE, level), values.T.reshape(-1)) for level, values in bounds.items()]])


def _pivot(frame: pl.DataFrame, card: Card) -> pl.DataFrame:
    """A long history (unique_id, ds, y) as a wide one: a column per id, on the times every id has."""
    ids = frame[LONG_ID].cast(pl.String)
    known = set(ids.unique().to_list())
    missing = [name for name in card.variables if name not in known]
    extra = sorted(known - set(card.variables) - set(card.ignored_columns))
    if missing or extra:
        problems = [f"it lacks series {', '.join(map(repr, missing))}" if missing else "",
                    f"series {', '.join(map(repr, extra))} are not variables of the model" if extra else ""]
        raise InputError(f"the history does not match model {card.model}, which forecasts {card.variables}: "
                         f"{'; '.join(p for p in problems if p)}")
    rows = (frame.select(pl.col(LONG_ID).cast(pl.String), LONG_TIME, LONG_VALUE)
            .filter(pl.col(LONG_ID).is_in(card.variables)))
    repeated = rows.select(pl.struct(LONG_ID, LONG_TIME).is_duplicated()).to_series()
    if repeated.any():
        row = rows.row(int(repeated.arg_true()[0]), named=True)
        raise InputError(f"the history holds series {row[LONG_ID]!r} at {row[LONG_TIME]} more than once")
    wide = rows.pivot(on=LONG_ID, index=LONG_TIME, values=LONG_VALUE)
    wide = wide.with_columns(pl.Series(LONG_TIME, _times(wide[LONG_TIME]), dtype=pl.Datetime("us"))).sort(LONG_TIME)
    if wide.select(pl.exclude(LONG_TIME).is_null().any()).row(0).count(True):
        raise InputError("the history's series are not on the same times (each unique_id needs a y at every ds)")
    wide = wide.rename({LONG_TIME: card.time_column}) if card.time_column and card.time_column not in wide.columns \
        else wide
    return wide


def _time_column(frame: pl.DataFrame, card: Card) -> str | None:
    if card.time_column is not None and card.time_column in frame.columns:
        return card.time_column
    dated = [name for name in frame.columns if frame.schema[name].is_temporal()]
    if len(dated) > 1:
        keep = f"name its time column {card.time_column!r}" if card.time_column else "keep one"
        raise InputError(f"the history has several columns of dates ({', '.join(map(repr, dated))}); {keep}")
    return dated[0] if dated else None


def _numbers(column: pl.Series) -> np.ndarray:
    if column.dtype.is_numeric():
        values = column.cast(pl.Float64)
    else:
        values = column.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        bad = (values.is_null() & column.is_not_null()).arg_true()
        if len(bad):
            raise InputError(f"the history's column {column.name!r}, row {int(bad[0])}: "
                             f"{_cut(column[int(bad[0])])} is not a number")
    return values.fill_null(float("nan")).to_numpy().astype(np.float64)


def _times(column: pl.Series) -> list[datetime]:
    if column.dtype == pl.Date:
        column = column.cast(pl.Datetime("us"))
    elif not column.dtype.is_temporal():
        text = column.cast(pl.String).str.strip_chars()
        try:
            parsed = text.str.to_datetime(strict=False)
        except pl.exceptions.PolarsError:
            raise InputError(f"the history's time column {column.name!r}: cannot read {_cut(text[0])} as a "
                             "date") from None
        bad = (parsed.is_null() & text.is_not_null()).arg_true()
        if len(bad):
            raise InputError(f"the history's time column {column.name!r}, row {int(bad[0])}: cannot read "
                             f"{_cut(text[int(bad[0])])} as a date")
        column = parsed
    if column.null_count():
        raise InputError(f"the history's time column {column.name!r}, row {int(column.is_null().arg_true()[0])}: "
                         "no time")
    if isinstance(column.dtype, pl.Datetime) and column.dtype.time_zone is not None:
        column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return column.cast(pl.Datetime("us")).to_list()


def _close(name: str, candidates: list[str]) -> str:
    close = [c for c in candidates if c.lower() == name.lower()] or difflib.get_close_matches(name, candidates, n=1)
    return f" (is {close[0]!r} it?)" if close else ""


def _cut(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."
