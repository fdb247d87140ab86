"""Long input (one row per series id, timestamp and value, as forecasting tools write it) pivoted
to the wide frame that the rest of ingestion validates: timestamp, then one variable per id.

Rows are checked before the pivot, while every row still has its line in the file: a pivot would
turn a bad value into a cell and a repeated (id, timestamp) pair into an aggregate, and the error
could no longer say where it came from.
"""

from __future__ import annotations

import polars as pl

from timedistill.conf import DataConfig
from timedistill.tasks.errors import DataError
from timedistill.tasks.ingest import parse_numbers, parse_timestamps

# Working names of the raw columns; the timestamp keeps data.timestamp, which no id may take.
ROW, ID, VALUE = "row", "id", "value"
IDS_SHOWN = 10  # a file may hold up to data.max_series ids: messages list only the first few


def pivot_long(frame: pl.DataFrame, data: DataConfig, source: str, where) -> pl.DataFrame:
    """Raw long rows -> timestamp (Datetime[us]) + one Float64 column per kept id, the target last,
    sorted by time; `data.align` decides which timestamps stay, `data.max_rows` cuts the result."""
    for role, name in (("id", data.id_column), ("value", data.value_column)):
        if name not in frame.columns:
            raise DataError(f"{source}: no {role} column {name!r} (columns: {frame.columns})")
    ids = _ids(frame[data.id_column], data, source, where)
    variables = _variables(ids, data, source)
    rows = pl.DataFrame({
        ROW: pl.int_range(0, frame.height, eager=True),
        ID: ids,
        data.timestamp: frame[data.timestamp],
        VALUE: frame[data.value_column],
    }).filter(pl.col(ID).is_in(variables))  # rows of ids left out are not parsed, like unselected wide columns

    raw_rows = rows[ROW]

    def where_raw(index: int) -> str:
        return where(raw_rows[index])

    stamps = parse_timestamps(rows[data.timestamp], data, source, where_raw)
    if stamps.null_count():  # a Parquet datetime column may hold nulls; text ones fail to parse above
        raise DataError(f"{source}: {where_raw(int(stamps.is_null().arg_true()[0]))}: "
                        f"no timestamp in column {data.timestamp!r}")
    numbers = pl.DataFrame({data.timestamp: stamps, data.value_column: rows[VALUE]})
    rows = rows.with_columns(stamps, parse_numbers(numbers, data, source, where_raw)[0].alias(VALUE))
    _check_pairs(rows, data, source, where)
    rows = _align(rows, len(variables), data, source)
    wide = rows.pivot(on=ID, index=data.timestamp, values=VALUE).sort(data.timestamp)
    wide = wide.select(data.timestamp, *variables)
    return wide.head(data.max_rows) if data.max_rows is not None else wide


def _ids(column: pl.Series, data: DataConfig, source: str, where) -> pl.Series:
    """Ids as text: numbers in the file name their variable by their string form."""
    ids = column.cast(pl.String).str.strip_chars()
    empty = ids.is_null() | (ids == "")
    if empty.any():
        raise DataError(f"{source}: {where(int(empty.arg_true()[0]))}: empty id in column {data.id_column!r}")
    clash = ids == data.timestamp
    if clash.any():
        raise DataError(f"{source}: {where(int(clash.arg_true()[0]))}: id {data.timestamp!r} in column "
                        f"{data.id_column!r} has the name of the timestamp column")
    return ids


def _variables(ids: pl.Series, data: DataConfig, source: str) -> list[str]:
    """The ids that become variables: data.columns in its order, else every id sorted; the target last."""
    known = ids.unique().sort().to_list()
    present = set(known)
    names = data.columns if data.columns is not None else known
    absent = [name for name in [*names, data.target] if name not in present]
    if absent:
        more = f", ... {len(known) - IDS_SHOWN} more" if len(known) > IDS_SHOWN else ""
        shown = ", ".join(known[:IDS_SHOWN])
        raise DataError(f"{source}: no id {absent[0]!r} in column {data.id_column!r} (ids: {shown}{more})")
    variables = [name for name in dict.fromkeys(names) if name != data.target] + [data.target]
    if len(variables) > data.max_series:
        raise DataError(f"{source}: {len(variables)} ids to keep in column {data.id_column!r}, more than "
                        f"data.max_series ({data.max_series})")
    return variables


def _check_pairs(rows: pl.DataFrame, data: DataConfig, source: str, where) -> None:
    """One value per id and timestamp: a second one would be silently aggregated by the pivot."""
    repeated = ~rows.select(pl.struct(ID, data.timestamp).is_first_distinct()).to_series()
    if not repeated.any():
        return
    second = rows.row(int(repeated.arg_true()[0]), named=True)
    first = rows.filter((pl.col(ID) == second[ID]) & (pl.col(data.timestamp) == second[data.timestamp]))[ROW][0]
    raise DataError(f"{source}: duplicated (id, timestamp) pair ({second[ID]!r}, {second[data.timestamp]}) "
                    f"at {where(second[ROW])} (first at {where(first)})")


def _align(rows: pl.DataFrame, n_ids: int, data: DataConfig, source: str) -> pl.DataFrame:
    """inner: only the timestamps every id has; outer: all of them (the pivot leaves nulls in the holes)."""
    if data.align == "outer":
        return rows
    # (id, timestamp) pairs are unique, so a timestamp's row count is the number of ids that have it
    shared = rows.group_by(data.timestamp).len().filter(pl.col("len") == n_ids)[data.timestamp]
    if shared.is_empty():
        raise DataError(f"{source}: ids share no timestamps (data.align: inner keeps only the timestamps "
                        f"every id has; outer keeps them all)")
    return rows.filter(pl.col(data.timestamp).is_in(shared.implode()))
