"""Cells to values, and rows to a regular time grid: the parsing that wide and long files share
(ingest.py reads wide ones, long_format.py pivots long ones first).

Every error names the file, the column and the line of the file (or the row of a Parquet file);
a value it echoes is cut to 80 characters.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import numpy as np
import polars as pl

from timedistill.tasks.errors import DataError
from timedistill.tasks.reading import shown

Where = Callable[[int], str]  # a row index -> where it is in the file ("line 12", "row 10")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the series is stored as float32
MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "none")  # cells that say "no value", any case


def row_namer(row_offset: int) -> Where:
    def where(index: int) -> str:
        return f"line {index + row_offset}" if row_offset else f"row {index}"

    return where


def parse_timestamps(column: pl.Series, name: str, timestamp_format: str | None, source: str,
                     where: Where) -> pl.Series:
    """A time column as Datetime[us] (UTC when it had a zone, then naive); an empty or unreadable
    cell is an error."""
    if column.dtype == pl.Datetime:
        parsed = column
    elif column.dtype == pl.Date:
        parsed = column.cast(pl.Datetime)
    elif column.dtype == pl.String:
        text = column.str.strip_chars()
        try:
            parsed = text.str.to_datetime(format=timestamp_format, strict=False)
        except pl.exceptions.PolarsError:
            value = text.drop_nulls().filter(text.drop_nulls() != "").head(1).to_list()
            raise DataError(f"{source}: column {name!r}: cannot read {shown(value[0]) if value else 'its values'} "
                            "as a date; set data.timestamp_format (e.g. '%d.%m.%Y %H:%M')") from None
        bad = parsed.is_null() & text.is_not_null() & (text != "")
        if bad.any():
            index = int(bad.arg_true()[0])
            raise DataError(f"{source}: {where(index)}: cannot parse timestamp {shown(text[index])} in column {name!r}")
    else:
        raise DataError(f"{source}: column {name!r} holds {column.dtype} values, not timestamps")
    if parsed.null_count():
        raise DataError(f"{source}: {where(int(parsed.is_null().arg_true()[0]))}: no timestamp in column {name!r}")
    if isinstance(parsed.dtype, pl.Datetime) and parsed.dtype.time_zone is not None:
        parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return parsed.dt.cast_time_unit("us").alias(name)


def parse_numbers(frame: pl.DataFrame, source: str, where: Where) -> list[pl.Series]:
    """Every column but the first (the time) as Float64: NaN and empty cells (and NA, null, ...)
    become missing values, which data.missing handles; text that is not a number, an infinite
    value or one too large for float32 is an error."""
    parsed = []
    for name in frame.columns[1:]:
        column = frame[name]
        if column.dtype.is_numeric():
            values = column.cast(pl.Float64)
        elif column.dtype != pl.String:
            raise DataError(f"{source}: column {name!r} holds {column.dtype} values, not numbers")
        else:
            stripped = column.str.strip_chars()
            missing_as_null = pl.when(stripped.str.to_lowercase().is_in(MISSING_TOKENS)).then(None).otherwise(stripped)
            text = pl.select(missing_as_null.alias(name)).to_series()
            values = text.cast(pl.Float64, strict=False)
            bad = values.is_null() & text.is_not_null()
            if bad.any():
                index = int(bad.arg_true()[0])
                raise DataError(f"{source}: column {name!r}, {where(index)}: {shown(text[index])} is not a number")
        values = values.fill_nan(None)  # NaN and empty cells: both "missing"
        infinite = values.is_infinite().fill_null(False)
        if infinite.any():
            index = int(infinite.arg_true()[0])
            raise DataError(f"{source}: column {name!r}, {where(index)}: infinite value")
        too_large = (values.abs() > FLOAT32_MAX).fill_null(False)
        if too_large.any():
            index = int(too_large.arg_true()[0])
            raise DataError(f"{source}: column {name!r}, {where(index)}: {shown(values[index])} does not fit float32, "
                            "the stored type")
        parsed.append(values.alias(name))
    return parsed


def check_order(frame: pl.DataFrame, duplicates: str, source: str, where: Where) -> tuple[pl.DataFrame, int]:
    """Timestamps strictly increasing; with data.duplicates: drop, rows identical to the one
    before are removed first (and counted)."""
    stamp = frame.columns[0]
    dropped = 0
    if duplicates == "drop":  # only rows identical to the one before: a real repeated record
        repeated = pl.all_horizontal(pl.all().eq_missing(pl.all().shift(1)))
        mask = frame.select(repeated.fill_null(False)).to_series()
        dropped = int(mask.sum())
        frame = frame.filter(~mask)
    stamps = frame[stamp]
    diffs = stamps.diff().slice(1)
    duplicated = diffs == timedelta(0)
    if duplicated.any():
        index = int(duplicated.arg_true()[0]) + 1
        hint = "" if duplicates == "drop" else " (data.duplicates: drop removes identical repeated rows)"
        raise DataError(f"{source}: duplicated timestamp {stamps[index]} at {where(index)}{hint}")
    backwards = diffs < timedelta(0)
    if backwards.any():
        index = int(backwards.arg_true()[0]) + 1
        raise DataError(f"{source}: timestamps out of order at {where(index)}: "
                        f"{stamps[index]} comes after {stamps[index - 1]}")
    return frame, dropped


def infer_step(stamps: pl.Series, source: str) -> timedelta:
    """The series' step: its most common spacing."""
    if stamps.len() < 2:
        raise DataError(f"{source}: a single row has no time step")
    return stamps.diff().slice(1).mode().sort()[0]


def fill_gaps(frame: pl.DataFrame, missing: str, step: timedelta, source: str,
              where: Where) -> tuple[pl.DataFrame, int, int]:
    """(the frame on the regular grid, gaps, rows inserted); under data.missing: error a gap is
    an error, else its rows are inserted empty for fill_values."""
    stamp = frame.columns[0]
    stamps = frame[stamp]
    diffs = stamps.diff().slice(1)
    irregular = (diffs.dt.total_microseconds() % int(step / timedelta(microseconds=1))) != 0
    if irregular.any():
        index = int(irregular.arg_true()[0]) + 1
        raise DataError(f"{source}: irregular time index at {where(index)}: {stamps[index]} is not a "
                        f"whole number of steps ({format_step(step)}) after {stamps[index - 1]}")
    gaps = diffs > step
    if not gaps.any():
        return frame, 0, 0
    n_gaps = int(gaps.sum())
    grid = pl.datetime_range(stamps[0], stamps[-1], interval=step, eager=True, time_unit="us")
    inserted = grid.len() - frame.height
    if missing == "error":
        index = int(gaps.arg_true()[0]) + 1
        raise DataError(f"{source}: {n_gaps} gap(s) in the time index ({inserted} missing steps); the "
                        f"first after {stamps[index - 1]} ({where(index - 1)}); set data.missing to "
                        f"ffill or interpolate to fill them")
    regular = pl.DataFrame({stamp: grid}).join(frame, on=stamp, how="left", maintain_order="left")
    return regular, n_gaps, inserted


def fill_values(frame: pl.DataFrame, missing: str, source: str, where: Where) -> tuple[pl.DataFrame, int]:
    """(the frame without missing values, how many were filled) under data.missing."""
    variables = frame.columns[1:]
    nulls = frame.select(pl.col(variables).is_null().sum()).row(0)
    total = int(sum(nulls))
    if total == 0:
        return frame, 0
    if missing == "error":
        column = variables[next(i for i, n in enumerate(nulls) if n)]
        index = int(frame[column].is_null().arg_true()[0])
        raise DataError(f"{source}: {total} missing value(s); the first in column {column!r}, {where(index)} (NaN "
                        "and empty cells are missing values); set data.missing to ffill or interpolate to fill them")
    if missing == "interpolate":
        frame = frame.with_columns(pl.col(variables).interpolate())
    frame = frame.with_columns(pl.col(variables).forward_fill().backward_fill())
    empty = [name for name in variables if frame[name].null_count()]  # no value at all: nothing to fill from
    if empty:
        raise DataError(f"{source}: column {empty[0]!r} has no values")
    return frame, total


def format_step(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
