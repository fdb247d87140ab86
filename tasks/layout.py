"""Which column is the time, and whether a file is wide or long: read off the file where the config
leaves it open, so that a file of one's own needs no settings beyond its path.

    wide   time column + a column per variable                  (ETTh1: date, HUFL, ..., OT)
    long   time column + an id column + a value column          (neuralforecast: unique_id, ds, y)

A column the config names and the file lacks is reported with every other such problem at once,
each with the close match the file has, so that one run says everything that must change.
"""

from __future__ import annotations

import difflib
from typing import Literal, NamedTuple

import polars as pl

from timedistill.conf import DataConfig
from timedistill.tasks.errors import DataError

LONG_PAIRS = (("unique_id", "y"), ("id", "value"))  # (id, value) columns of a long file, as tools write them
TIME_NAMES = ("ds", "date", "timestamp", "time", "datetime")  # settle a tie between columns of dates
SAMPLE = 20  # values of a text column read to decide whether it holds dates


class Layout(NamedTuple):
    """How a file's columns are read."""

    timestamp: str
    format: Literal["wide", "long"]
    id_column: str | None
    value_column: str | None
    found: str | None  # what was read off the file rather than set, in words; None when all was set

    def settings(self) -> dict[str, str | None]:
        """The data settings this layout amounts to (what a config would say)."""
        return {"timestamp": self.timestamp, "format": self.format, "id_column": self.id_column,
                "value_column": self.value_column}


def find_layout(frame: pl.DataFrame, data: DataConfig, source: str, time_hint: str | None = None) -> Layout:
    """The layout of `frame` under `data`: what it sets, and the rest found in the file.
    `time_hint` (a model's time column, when reading a history for it) is the time column
    where the file has it and the config names none."""
    columns = frame.columns
    pair = _long_pair(columns, data, source)
    taken = set(pair) if pair else set()
    problems: list[str] = []
    found = []
    if data.timestamp is None and time_hint is not None and time_hint in columns and time_hint not in taken:
        timestamp = time_hint
    elif data.timestamp is None:
        timestamp = _time_column(frame.select([c for c in columns if c not in taken]), pair is not None, source)
        found.append(f"time column {timestamp!r}")
    else:
        timestamp = data.timestamp
        if timestamp not in columns:
            problems.append(absent(timestamp, "data.timestamp", columns))
    if pair is None:
        names = [*(data.columns or []), *([data.target] if data.target else [])]
        problems += [absent(name, "data.columns" if name in (data.columns or []) else "data.target", columns)
                     for name in dict.fromkeys(names) if name not in columns]
        if timestamp in names:
            problems.append(f"the time column {timestamp!r} is also named as a variable (data.columns or data.target)")
    if problems:
        raise DataError(f"{source}: {'; '.join(problems)} (columns: {columns})")
    if pair is not None and data.format == "auto":
        found.append(f"long layout ({pair[0]}, {pair[1]})")
    return Layout(timestamp=timestamp, format="long" if pair else "wide", id_column=pair[0] if pair else None,
                  value_column=pair[1] if pair else None, found=", ".join(found) or None)


def absent(name: str, key: str, names: list[str]) -> str:
    """A name the config gives that the file lacks, with the closest the file has."""
    return f"no column {name!r} ({key}{suggestion(name, names)})"


def suggestion(name: str, names: list[str]) -> str:
    """'; did you mean 'date'?' when `names` holds something close to `name`, else ''."""
    same_case = [other for other in names if other.lower() == name.lower()]
    close = same_case or difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _long_pair(columns: list[str], data: DataConfig, source: str) -> tuple[str, str] | None:
    """The (id, value) columns of a long file, or None for a wide one."""
    if data.format == "wide":
        return None
    if data.id_column is not None and data.value_column is not None:
        pairs = [(data.id_column, data.value_column)]
    else:  # a name not set takes each usual pair's
        pairs = [(data.id_column or id_name, data.value_column or value_name) for id_name, value_name in LONG_PAIRS]
    for pair in pairs:
        if all(name in columns for name in pair):
            return pair
    if data.format == "long":  # say what the closest pair lacks
        closest = max(pairs, key=lambda candidate: sum(name in columns for name in candidate))
        problems = [absent(name, key, columns) for name, key in zip(closest, ("data.id_column", "data.value_column"),
                                                                     strict=True) if name not in columns]
        raise DataError(f"{source}: data.format is long, but {'; '.join(problems)} (columns: {columns})")
    return None


def _time_column(frame: pl.DataFrame, long: bool, source: str) -> str:
    """The column of dates: of a temporal type, or of text whose first values read as dates (in a
    long file, the one column besides the ids and values)."""
    if long and frame.width == 1:
        return frame.columns[0]
    dated = [name for name in frame.columns if frame.schema[name].is_temporal()]
    if not dated:
        dated = [name for name in frame.columns if frame.schema[name] == pl.String and _reads_as_dates(frame[name])]
    if len(dated) > 1:
        named = [name for name in dated if name.lower() in TIME_NAMES]
        if len(named) != 1:
            raise DataError(f"{source}: several columns hold dates ({', '.join(map(repr, dated))}); set "
                            "data.timestamp to the time column")
        dated = named
    if not dated:
        raise DataError(f"{source}: no column holds dates (columns: {frame.columns}); set data.timestamp to the "
                        "time column, and data.timestamp_format if its dates are written unusually")
    return dated[0]


def _reads_as_dates(column: pl.Series) -> bool:
    """Most of the first values read as dates (the one that does not is reported, with its line,
    when the column is parsed)."""
    text = column.drop_nulls().str.strip_chars()
    sample = text.filter(text != "").head(SAMPLE)
    if sample.is_empty():
        return False
    try:
        parsed = sample.str.to_datetime(strict=False)
    except pl.exceptions.PolarsError:  # no format fits the first value
        return False
    return parsed.null_count() <= sample.len() // 2
