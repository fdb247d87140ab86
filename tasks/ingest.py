"""Ingestion: a raw CSV or Parquet file becomes a validated float32 series in Parquet plus a
manifest (splits, scaler, step), keyed by a fingerprint of the content and the data settings.

Everything is validated before anything is written, so bad input leaves no output behind; the
error names the file, and the column, row or timestamp at fault.
"""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pyarrow.fs as pafs

from timedistill.conf import Config, DataConfig, stable_hash
from timedistill.conf.schema import duration
from timedistill.store.records import SERIES, Dataset, Lineage, Missing
from timedistill.store.scaler import Scaler
from timedistill.store.storage import Storage, make_filesystem
from timedistill.tasks.errors import DataError
from timedistill.tasks.windows import RollingSizes, Span, split_rows, window_counts

MANIFEST = "manifest.json"
LATEST = "LATEST"  # datasets/<name>/LATEST: the fingerprint ingested last, what new data is compared with
FINGERPRINT_KEYS = ("name", "timestamp", "timestamp_format", "target", "columns", "split", "ratios",
                    "missing", "duplicates", "max_rows", "format", "id_column", "value_column", "align",
                    "max_series", "val_size", "test_size", "train_size")  # lookback/horizons only shape windows


def dataset_dir(data: DataConfig, fingerprint: str) -> str:
    return f"datasets/{data.name}/{fingerprint}"


def fingerprint_settings(data: DataConfig) -> dict[str, Any]:
    return {key: value for key, value in data.key_payload().items() if key in FINGERPRINT_KEYS}


def ingest(config: Config, storage: Storage) -> Dataset:
    """Validate and store `config.data`; reuse an earlier identical ingestion."""
    data = config.data
    content = read_source(data.path, config.storage.endpoint_override)
    fingerprint = data_fingerprint(content, data)
    directory = dataset_dir(data, fingerprint)
    if storage.exists(f"{directory}/{MANIFEST}"):  # the manifest is written last: complete
        found = Dataset.from_json(storage.read_json(f"{directory}/{MANIFEST}"), directory=directory, cached=True)
        check_windows(found.splits, data, data.path)
        storage.write_bytes(f"datasets/{data.name}/{LATEST}", f"{fingerprint}\n".encode())
        return found

    frame, missing, step = parse_series(content, data)
    rows = split_rows(data.split, frame.height, data.ratios, source=data.path, rolling=rolling_sizes(data, step))
    check_windows(rows, data, data.path)
    variables = frame.columns[1:]
    frame = frame.with_columns(pl.col(variables).cast(pl.Float32))  # as stored
    lineage = compare_with_previous(storage, data, frame)
    train = frame.slice(rows["train"][0], rows["train"][1] - rows["train"][0])
    dataset = Dataset(
        name=data.name, fingerprint=fingerprint, source=data.path, source_sha256=hashlib.sha256(content).hexdigest(),
        rows=frame.height, variables=variables, target=data.target, timestamp=data.timestamp,
        step=_format_step(step), start=str(frame[data.timestamp][0]), end=str(frame[data.timestamp][-1]),
        splits=rows, scaler=Scaler.fit(train.select(variables).to_numpy().astype(np.float64)), missing=missing,
        settings=fingerprint_settings(data), created=datetime.now(UTC).isoformat(timespec="seconds"),
        **lineage.model_dump(), directory=directory)
    with storage.publish_dir(directory) as staging:
        storage.write_parquet(f"{staging}/{SERIES}", frame.to_arrow())
        storage.write_json(f"{staging}/{MANIFEST}", dataset.to_json())
    storage.write_bytes(f"datasets/{data.name}/{LATEST}", f"{fingerprint}\n".encode())  # only once complete
    return dataset


def rolling_sizes(data: DataConfig, step: timedelta) -> RollingSizes | None:
    """split=rolling: data.val_size, test_size and train_size in steps of the series."""
    if data.split != "rolling":
        return None
    val, test = (steps(getattr(data, key), step, key, data.path) for key in ("val_size", "test_size"))
    train = steps(data.train_size, step, "train_size", data.path) if data.train_size is not None else None
    return RollingSizes(val=val, test=test, train=train)


def steps(size: int | str, step: timedelta, key: str, source: str) -> int:
    """A size as a count of steps: an integer is one already; a duration must be whole steps."""
    if isinstance(size, int):
        return size
    span = duration(size)
    if span % step:
        raise DataError(f"{source}: data.{key} {size!r} is not a whole number of steps of {_format_step(step)}")
    return span // step


def compare_with_previous(storage: Storage, data: DataConfig, frame: pl.DataFrame) -> Lineage:
    """What changed since the version of this dataset ingested last (datasets/<name>/LATEST):
    rows appended after its end, or a history that differs (a changed value, a missing row or
    variable). Under data.history: append-only a changed history is an error, before anything
    is written."""
    pointer = f"datasets/{data.name}/{LATEST}"
    if not storage.exists(pointer):
        return Lineage()
    fingerprint = storage.read_bytes(pointer).decode().strip()
    folder = dataset_dir(data, fingerprint)
    if not storage.exists(f"{folder}/{MANIFEST}"):
        return Lineage()
    previous = Dataset.from_json(storage.read_json(f"{folder}/{MANIFEST}"), directory=folder)
    old = pl.from_arrow(storage.read_parquet(previous.series_path))
    stamp = data.timestamp
    end = old[stamp][-1]
    appended = int((frame[stamp] > end).sum())
    problem, first = None, None
    if old.columns != frame.columns:
        problem, first = f"its variables are {old.columns[1:]}, the previous version's {previous.variables}", \
            old[stamp][0]
    else:
        new = frame.with_columns(pl.lit(True).alias(PRESENT))
        joined = old.join(new, on=stamp, how="left", suffix=NEW, maintain_order="left")
        differs = pl.any_horizontal(pl.col(f"{name}{NEW}").ne_missing(pl.col(name)) for name in old.columns[1:])
        changed = joined.select(differs).to_series().arg_true()
        if len(changed):
            row = joined.row(int(changed[0]), named=True)
            first = row[stamp]
            if row[PRESENT] is None:
                problem = f"it has no row at {first}, which the previous version has"
            else:
                name = next(n for n in old.columns[1:] if row[f"{n}{NEW}"] != row[n])
                problem = f"at {first}, column {name!r} is {row[name + NEW]} where the previous version has {row[name]}"
    if problem is not None and data.history == "append-only":
        raise DataError(f"{data.path}: {problem} (previous version {fingerprint}; data.history is append-only: "
                        f"only rows after {end} may be added)")
    return Lineage(previous=fingerprint, appended_rows=appended, history_changed=problem is not None,
                   first_changed=str(first) if first is not None else None)


def ingest_summary(dataset: Dataset, lookback: int, horizons: list[int], storage: Storage) -> dict[str, Any]:
    """The `ingest --json` record: the manifest's facts plus window counts for this config."""
    counts = {h: window_counts(dataset.splits, lookback, h) for h in horizons}
    return {
        "dataset": dataset.name,
        "path": storage.uri(dataset.series_path),
        "rows": dataset.rows,
        "variables": dataset.variables,
        "step": dataset.step,
        "fingerprint": dataset.fingerprint,
        "cached": dataset.cached,
        "splits": {
            split: {"rows": list(span), "windows": {str(h): counts[h][split] for h in horizons}}
            for split, span in dataset.splits.items()
        },
        "scaler": dataset.scaler.to_json(),
        "missing": dataset.missing.to_json(),
        "previous": dataset.previous,
        "appended_rows": dataset.appended_rows,
        "history_changed": dataset.history_changed,
        "first_changed": dataset.first_changed,
    }


def read_source(path: str, endpoint_override: str | None = None) -> bytes:
    """The raw bytes of a local file or a URI (s3:// with the storage's endpoint, gs://, file://)."""
    try:
        if "://" in path:
            fs, inner = make_filesystem(path, endpoint_override if path.startswith("s3://") else None)
        else:
            fs, inner = pafs.LocalFileSystem(), path
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{path}: file not found")
        if info.type != pafs.FileType.File:
            raise DataError(f"{path}: not a file")
        with fs.open_input_stream(inner) as stream:
            content = stream.read()
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if not content.strip():
        raise DataError(f"{path}: file is empty")
    return content


def data_fingerprint(content: bytes, data: DataConfig) -> str:
    settings = fingerprint_settings(data)
    return stable_hash({"sha256": hashlib.sha256(content).hexdigest(), "settings": settings})[:16]


def parse_series(content: bytes, data: DataConfig) -> tuple[pl.DataFrame, Missing, timedelta]:
    """Raw bytes -> (frame of timestamp + Float64 variables on a regular grid, what was filled
    or dropped, the time step)."""
    source = data.path
    frame, row_offset = _read_frame(content, source)
    where = row_namer(row_offset)

    if data.timestamp not in frame.columns:
        raise DataError(f"{source}: no timestamp column {data.timestamp!r} (columns: {frame.columns})")
    if frame.height == 0:
        raise DataError(f"{source}: no data rows")
    if data.format == "long":
        from timedistill.tasks.long_format import pivot_long  # it parses with this module's helpers

        frame = pivot_long(frame, data, source, where)  # data.max_rows counts rows of the pivoted series

        def where(index: int) -> str:  # from here on, rows of the pivoted series, not lines of the file
            return f"row {index} of the series pivoted from {data.id_column!r}"
    else:
        if data.max_rows is not None:
            frame = frame.head(data.max_rows)
        frame = frame.with_columns(parse_timestamps(frame[data.timestamp], data, source, where))
        frame = frame.select([data.timestamp, *_variables(frame.columns, data, source)])
        frame = frame.with_columns(parse_numbers(frame, data, source, where))

    frame, duplicates_dropped = _check_order(frame, data, source, where)
    step = _infer_step(frame[data.timestamp], source)
    frame, gaps, rows_inserted = _fill_gaps(frame, data, step, source, where)
    frame, values_filled = _fill_values(frame, data, source, where)
    missing = Missing(policy=data.missing, duplicates_dropped=duplicates_dropped, gaps=gaps,
                      rows_inserted=rows_inserted, values_filled=values_filled)
    return frame, missing, step


def _read_frame(content: bytes, source: str) -> tuple[pl.DataFrame, int]:
    """Parquet or CSV (every column read as text, so that errors can name the raw value)."""
    try:
        if content[:4] == b"PAR1":
            return pl.read_parquet(io.BytesIO(content)), 0
        header = next(csv.reader(io.StringIO(content.decode("utf-8", "replace").split("\n", 1)[0])), [])
        names = [name.strip().lstrip("\ufeff") for name in header]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # Polars would rename the second one silently (HUFL_duplicated_0)
            raise DataError(f"{source}: the header names column(s) {repeated} more than once")
        frame = pl.read_csv(io.BytesIO(content), infer_schema=False, encoding="utf8-lossy")
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{source}: cannot parse as CSV or Parquet: {exc}") from None
    frame = frame.rename(dict(zip(frame.columns, names, strict=True)))
    blank = frame.select(pl.all_horizontal(pl.all().is_null() | (pl.all().str.strip_chars() == ""))).to_series()
    filled = np.flatnonzero(~blank.to_numpy())
    frame = frame.head(int(filled[-1]) + 1 if len(filled) else 0)  # blank lines at the end are not rows
    return frame, 2  # data row 0 is on line 2 of a CSV file


def row_namer(row_offset: int):
    def where(index: int) -> str:
        return f"line {index + row_offset}" if row_offset else f"row {index}"

    return where


def parse_timestamps(column: pl.Series, data: DataConfig, source: str, where) -> pl.Series:
    if column.dtype == pl.Datetime:
        parsed = column
    elif column.dtype == pl.Date:
        parsed = column.cast(pl.Datetime)
    else:
        text = column.cast(pl.String).str.strip_chars()
        try:
            parsed = text.str.to_datetime(format=data.timestamp_format, strict=False)
        except pl.exceptions.PolarsError as exc:
            raise DataError(f"{source}: column {data.timestamp!r}: cannot parse timestamps: {exc}") from None
        bad = parsed.is_null()
        if bad.any():
            index = int(bad.arg_true()[0])
            raise DataError(f"{source}: {where(index)}: cannot parse timestamp {text[index]!r} "
                            f"in column {data.timestamp!r}")
    if parsed.dtype.time_zone is not None:  # type: ignore[union-attr]
        parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return parsed.dt.cast_time_unit("us").alias(data.timestamp)


def _variables(columns: list[str], data: DataConfig, source: str) -> list[str]:
    names = data.columns if data.columns is not None else [c for c in columns if c != data.timestamp]
    missing = [name for name in [*names, data.target] if name not in columns]
    if missing:
        raise DataError(f"{source}: no column {missing[0]!r} (columns: {columns})")
    if not names:
        raise DataError(f"{source}: no variable columns besides {data.timestamp!r}")
    return [name for name in names if name != data.target] + [data.target]


def parse_numbers(frame: pl.DataFrame, data: DataConfig, source: str, where) -> list[pl.Series]:
    parsed = []
    for name in frame.columns[1:]:
        column = frame[name]
        if column.dtype.is_numeric():
            values = column.cast(pl.Float64)
        elif column.dtype != pl.String:
            raise DataError(f"{source}: column {name!r} holds {column.dtype} values, not numbers")
        else:
            text = column.cast(pl.String).str.strip_chars()
            values = text.cast(pl.Float64, strict=False)
            bad = values.is_null() & text.is_not_null() & (text != "")
            if bad.any():
                index = int(bad.arg_true()[0])
                raise DataError(f"{source}: column {name!r}, {where(index)}: {text[index]!r} is not a number")
        infinite = values.is_infinite()
        if infinite.any():
            index = int(infinite.arg_true()[0])
            raise DataError(f"{source}: column {name!r}, {where(index)}: infinite value")
        too_large = values.abs() > FLOAT32_MAX  # the series is stored as float32
        if too_large.any():
            index = int(too_large.arg_true()[0])
            raise DataError(f"{source}: column {name!r}, {where(index)}: {values[index]!r} does not fit float32, "
                            "the stored type")
        parsed.append(values.fill_nan(None).alias(name))  # NaN and empty cells: both "missing"
    return parsed


def _check_order(frame: pl.DataFrame, data: DataConfig, source: str, where) -> tuple[pl.DataFrame, int]:
    stamps = frame[data.timestamp]
    dropped = 0
    if data.duplicates == "drop":  # only rows identical to the one before: a real repeated record
        repeated = pl.all_horizontal(pl.all().eq_missing(pl.all().shift(1)))
        mask = frame.select(repeated.fill_null(False)).to_series()
        dropped = int(mask.sum())
        frame = frame.filter(~mask)
        stamps = frame[data.timestamp]
    diffs = stamps.diff().slice(1)
    duplicated = diffs == timedelta(0)
    if duplicated.any():
        index = int(duplicated.arg_true()[0]) + 1
        hint = "" if data.duplicates == "drop" else " (data.duplicates: drop removes identical repeated rows)"
        raise DataError(f"{source}: duplicated timestamp {stamps[index]} at {where(index)}{hint}")
    backwards = diffs < timedelta(0)
    if backwards.any():
        index = int(backwards.arg_true()[0]) + 1
        raise DataError(f"{source}: timestamps out of order at {where(index)}: "
                        f"{stamps[index]} comes after {stamps[index - 1]}")
    return frame, dropped


def _infer_step(stamps: pl.Series, source: str) -> timedelta:
    if stamps.len() < 2:
        raise DataError(f"{source}: a single row has no time step")
    step = stamps.diff().slice(1).mode().sort()[0]  # the most common spacing
    return step


def _fill_gaps(frame: pl.DataFrame, data: DataConfig, step: timedelta, source: str,
               where) -> tuple[pl.DataFrame, int, int]:
    stamps = frame[data.timestamp]
    diffs = stamps.diff().slice(1)
    irregular = (diffs.dt.total_microseconds() % int(step / timedelta(microseconds=1))) != 0
    if irregular.any():
        index = int(irregular.arg_true()[0]) + 1
        raise DataError(f"{source}: irregular time index at {where(index)}: {stamps[index]} is not a "
                        f"whole number of steps ({_format_step(step)}) after {stamps[index - 1]}")
    gaps = diffs > step
    if not gaps.any():
        return frame, 0, 0
    n_gaps = int(gaps.sum())
    grid = pl.datetime_range(stamps[0], stamps[-1], interval=step, eager=True, time_unit="us")
    inserted = grid.len() - frame.height
    if data.missing == "error":
        index = int(gaps.arg_true()[0]) + 1
        raise DataError(f"{source}: {n_gaps} gap(s) in the time index ({inserted} missing steps); the "
                        f"first after {stamps[index - 1]} ({where(index - 1)}); set data.missing to "
                        f"ffill or interpolate to fill them")
    regular = pl.DataFrame({data.timestamp: grid}).join(frame, on=data.timestamp, how="left",
                                                         maintain_order="left")
    return regular, n_gaps, inserted


def _fill_values(frame: pl.DataFrame, data: DataConfig, source: str, where) -> tuple[pl.DataFrame, int]:
    variables = frame.columns[1:]
    nulls = frame.select(pl.col(variables).is_null().sum()).row(0)
    total = int(sum(nulls))
    if total == 0:
        return frame, 0
    if data.missing == "error":
        column = variables[next(i for i, n in enumerate(nulls) if n)]
        index = int(frame[column].is_null().arg_true()[0])
        raise DataError(f"{source}: {total} missing value(s); the first in column {column!r}, "
                        f"{where(index)}; set data.missing to ffill or interpolate to fill them")
    if data.missing == "interpolate":
        frame = frame.with_columns(pl.col(variables).interpolate())
    frame = frame.with_columns(pl.col(variables).forward_fill().backward_fill())
    # a column with no value at all cannot be filled
    empty = [name for name in variables if frame[name].null_count()]
    if empty:
        raise DataError(f"{source}: column {empty[0]!r} has no values")
    return frame, total


NEW, PRESENT = "__new", "__present"  # columns of the comparison with the previous version
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _format_step(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def check_windows(spans: dict[str, Span], data: DataConfig, source: str) -> None:
    """Every split must hold at least one window of every configured horizon."""
    for horizon in data.horizons:
        for split, count in window_counts(spans, data.lookback, horizon).items():
            if count < 1:
                start, end = spans[split]
                hint = "; make data.val_size or data.test_size smaller" if data.split == "rolling" else ""
                raise DataError(f"{source}: split {split!r} (rows [{start}, {end})) is too short for "
                                f"lookback {data.lookback} + horizon {horizon}{hint}")
