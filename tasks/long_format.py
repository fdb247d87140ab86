"""Long input (one row per series id, timestamp and value, as forecasting tools write it) pivoted
to the wide frame that the rest of ingestion validates: timestamp, then one variable per id.

Rows are checked before the pivot, while every row still has its line in the file: a pivot would
turn a bad value into a cell and a repeated (id, timestamp) pair into an aggregate, and the error
could no longer say where it came from.
"""

from __future__ import annotations

import polars as pl

from timedistill.conf import DataConfig
from timedistill.store.records import RowCut
from timedistill.tasks.errors import DataError
from timedistill.tasks.layout import Layout
from timedistill.tasks.reading import SHOWN, shown
from timedistill.tasks.values import Where, parse_numbers, parse_timestamps

# Working names of the raw columns; the timestamp keeps data.timestamp, which no id may take.
ROW, ID, VALUE = "row", "id", "value"
IDS_SHOWN = 10  # a file may hold up to data.max_series ids: messages list only the first few


def pivot_long(frame: pl.DataFrame, data: DataConfig, layout: Layout, source: str,
               where: Where) -> tuple[pl.DataFrame, list[str], list[RowCut]]:
    """Raw long rows -> (timestamp (Datetime[us]) + one Float64 column per kept id, sorted by
    time; the file's columns that were not read; the timestamps `data.align` removed)."""
    stamp, id_column, value_column = layout.timestamp, layout.id_column, layout.value_column
    if id_column is None or value_column is None:
        raise ValueError("pivot_long needs a long layout")
    ids = _ids(frame[id_column], id_column, stamp, source, where)
    variables = _variables(ids, id_column, data, source)
    rows = pl.DataFrame({
        ROW: pl.int_range(0, frame.height, eager=True),
        ID: ids,
        stamp: frame[stamp],
        VALUE: frame[value_column],
    }).filter(pl.col(ID).is_in(variables))  # rows of ids left out are not parsed, like unselected wide columns

    raw_rows = rows[ROW]

    def where_raw(index: int) -> str:
        return where(raw_rows[index])

    stamps = parse_timestamps(rows[stamp], stamp, data.timestamp_format, source, where_raw)
    numbers = pl.DataFrame({stamp: stamps, value_column: rows[VALUE]})
    rows = rows.with_columns(stamps, parse_numbers(numbers, source, where_raw)[0].alias(VALUE))
    _check_pairs(rows, stamp, id_column, source, where)
    times = rows[stamp].n_unique()
    rows = _align(rows, len(variables), stamp, data.align, source)
    wide = rows.pivot(on=ID, index=stamp, values=VALUE).sort(stamp).select(stamp, *variables)
    cuts = [RowCut(setting="data.align", rows=times - wide.height)] if wide.height < times else []
    ignored = [name for name in frame.columns if name not in (stamp, id_column, value_column)]
    return wide, ignored, cuts


def _ids(column: pl.Series, id_column: str, stamp: str, source: str, where: Where) -> pl.Series:
    """Ids as text: numbers in the file name their variable by their string form."""
    ids = column.cast(pl.String).str.strip_chars()
    empty = ids.is_null() | (ids == "")
    if empty.any():
        raise DataError(f"{source}: {where(int(empty.arg_true()[0]))}: empty id in column {id_column!r}")
    clash = ids == stamp
    if clash.any():
        raise DataError(f"{source}: {where(int(clash.arg_true()[0]))}: id {stamp!r} in column "
                        f"{id_column!r} has the name of the timestamp column")
    return ids


def _variables(ids: pl.Series, id_column: str, data: DataConfig, source: str) -> list[str]:
    """The ids that become variables: data.columns in its order, else every id sorted; data.target,
    when set, last."""
    known = ids.unique().sort().to_list()
    present = set(known)
    names = data.columns if data.columns is not None else known
    wanted = [*names, *([data.target] if data.target is not None else [])]
    absent = [name for name in dict.fromkeys(wanted) if name not in present]
    if absent:
        more = f", ... {len(known) - IDS_SHOWN} more" if len(known) > IDS_SHOWN else ""
        listed = ", ".join(name[:SHOWN] for name in known[:IDS_SHOWN])
        raise DataError(f"{source}: no id {', '.join(map(shown, absent))} in column {id_column!r} "
                        f"(ids: {listed}{more})")
    variables = [name for name in dict.fromkeys(wanted) if name != data.target]
    variables += [data.target] if data.target is not None else []
    if len(variables) > data.max_series:
        raise DataError(f"{source}: {len(variables)} ids to keep in column {id_column!r}, more than "
                        f"data.max_series ({data.max_series})")
    return variables


def _check_pairs(rows: pl.DataFrame, stamp: str, id_column: str, source: str, where: Where) -> None:
    """One value per id and timestamp: a second one would be silently aggregated by the pivot."""
    repeated = ~rows.select(pl.struct(ID, stamp).is_first_distinct()).to_series()
    if not repeated.any():
        return
    second = rows.row(int(repeated.arg_true()[0]), named=True)
    first = rows.filter((pl.col(ID) == second[ID]) & (pl.col(stamp) == second[stamp]))[ROW][0]
    raise DataError(f"{source}: duplicated (id, timestamp) pair ({shown(second[ID])}, {second[stamp]}) "
                    f"at {where(second[ROW])} (first at {where(first)})")


def _align(rows: pl.DataFrame, n_ids: int, stamp: str, align: str, source: str) -> pl.DataFrame:
    """inner: only the timestamps every id has; outer: all of them (the pivot leaves nulls in the holes)."""
    if align == "outer":
        return rows
    # (id, timestamp) pairs are unique, so a timestamp's row count is the number of ids that have it
    shared = rows.group_by(stamp).len().filter(pl.col("len") == n_ids)[stamp]
    if shared.is_empty():
        raise DataError(f"{source}: ids share no timestamps (data.align: inner keeps only the timestamps "
                        f"every id has; outer keeps them all)")
    return rows.filter(pl.col(stamp).is_in(shared.implode()))
