"""Ingestion: a raw CSV or Parquet file becomes a validated float32 series in Parquet plus a
manifest (splits, scaler, step), keyed by a fingerprint of the content and the data settings.

Everything a config leaves open is read off the file (tasks/layout.py: the time column, wide or
long) and recorded in the manifest, as is every row a setting did not keep (data.max_rows,
data.align, data.duplicates): the summary of an ingest says how many rows it kept of how many.
Everything is validated before anything is written, so bad input leaves no output behind; the
error names the file, and the column, row or timestamp at fault.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from timedistill.conf import FORMAT, Config, DataConfig, stable_hash
from timedistill.conf.spans import duration
from timedistill.store.record import read_record, write_record
from timedistill.store.records import SERIES, Dataset, Lineage, Missing, RowCut
from timedistill.store.scaler import Scaler
from timedistill.store.storage import Storage
from timedistill.tasks.errors import DataError
from timedistill.tasks.layout import Layout, find_layout
from timedistill.tasks.long_format import pivot_long
from timedistill.tasks.reading import read_source, read_table
from timedistill.tasks.values import (
    check_order,
    fill_gaps,
    fill_values,
    format_step,
    infer_step,
    parse_numbers,
    parse_timestamps,
    row_namer,
)
from timedistill.tasks.windows import RollingSizes, Span, split_rows, window_counts

MANIFEST = "manifest.json"
LATEST = "LATEST"  # datasets/<name>/LATEST: the fingerprint ingested last, what new data is compared with
FINGERPRINT_KEYS = ("name", "timestamp", "timestamp_format", "target", "columns", "split", "ratios",
                    "missing", "duplicates", "max_rows", "format", "id_column", "value_column", "align",
                    "max_series", "val_size", "test_size", "train_size")  # lookback/horizons only shape windows
NEW, PRESENT = "__new", "__present"  # columns of the comparison with the previous version


class Series(NamedTuple):
    """A source read and validated: what ingestion stores, and how it got there."""

    frame: pl.DataFrame  # the time column, then a Float64 column per variable, on a regular grid
    layout: Layout
    step: timedelta
    missing: Missing
    source_rows: int  # time steps of the source
    cuts: list[RowCut]  # rows not kept, by setting
    ignored_columns: list[str]  # columns of the file that were not read


def dataset_dir(data: DataConfig, fingerprint: str) -> str:
    return f"datasets/{data.name}/{fingerprint}"


def fingerprint_settings(data: DataConfig) -> dict[str, Any]:
    return {key: value for key, value in data.key_payload().items() if key in FINGERPRINT_KEYS}


def ingest(config: Config, storage: Storage) -> Dataset:
    """Validate and store `config.data`; reuse an earlier identical ingestion."""
    data = config.data
    content = read_source(data.path, config.storage.endpoint_override)
    fingerprint = data_fingerprint(content, data)  # what is read off the file follows from these two
    directory = dataset_dir(data, fingerprint)
    if storage.exists(f"{directory}/{MANIFEST}"):  # the manifest is written last: complete
        found = read_record(storage, f"{directory}/{MANIFEST}", Dataset, directory=directory, cached=True)
        check_windows(found.splits, data, data.path)
        storage.write_bytes(f"datasets/{data.name}/{LATEST}", f"{fingerprint}\n".encode())
        return found

    series = parse_series(content, data)
    frame, stamp = series.frame, series.layout.timestamp
    rows = split_rows(data.split, frame.height, data.ratios, source=data.path,
                      rolling=rolling_sizes(data, series.step))
    check_windows(rows, data, data.path)
    variables = frame.columns[1:]
    frame = frame.with_columns(pl.col(variables).cast(pl.Float32))  # as stored
    lineage = compare_with_previous(storage, data, frame)
    train = frame.slice(rows["train"][0], rows["train"][1] - rows["train"][0])
    scaler = Scaler.fit(train.select(variables).to_numpy().astype(np.float64))
    dataset = Dataset(
        name=data.name, fingerprint=fingerprint, source=data.path, source_sha256=hashlib.sha256(content).hexdigest(),
        rows=frame.height, source_rows=series.source_rows, cuts=series.cuts, variables=variables,
        target=data.target, **series.layout.settings(), found=series.layout.found,
        ignored_columns=series.ignored_columns, step=format_step(series.step), start=str(frame[stamp][0]),
        end=str(frame[stamp][-1]), splits=rows, scaler=scaler, missing=series.missing,
        settings=fingerprint_settings(data), created=datetime.now(UTC).isoformat(timespec="seconds"),
        **lineage.model_dump(), directory=directory)
    with storage.publish_dir(directory) as staging:
        storage.write_parquet(f"{staging}/{SERIES}", frame.to_arrow())
        write_record(storage, f"{staging}/{MANIFEST}", dataset)
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
        raise DataError(f"{source}: data.{key} {size!r} is not a whole number of steps of {format_step(step)}")
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
    old = pl.DataFrame(storage.read_parquet(f"{folder}/{SERIES}"))
    stamp = frame.columns[0]
    end = old[old.columns[0]][-1]
    appended = int((frame[stamp] > end).sum())
    problem, first = None, None
    if old.columns != frame.columns:
        problem, first = (f"its columns are {frame.columns}, the previous version's {old.columns}",
                          old[old.columns[0]][0])
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
        "source_rows": dataset.source_rows,
        "kept_rows": dataset.kept_rows,
        "cuts": [cut.to_json() for cut in dataset.cuts],
        "variables": dataset.variables,
        "timestamp": dataset.timestamp,
        "format": dataset.format,
        "found": dataset.found,
        "ignored_columns": dataset.ignored_columns,
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


def data_fingerprint(content: bytes, data: DataConfig) -> str:
    settings = fingerprint_settings(data)
    return stable_hash({"sha256": hashlib.sha256(content).hexdigest(), "settings": settings, "format": FORMAT})[:16]


def parse_series(content: bytes, data: DataConfig, time_hint: str | None = None) -> Series:
    """Raw bytes -> the validated series on a regular grid, with what was read off the file,
    filled, dropped and cut (`time_hint`: see find_layout)."""
    source = data.path
    frame, row_offset = read_table(content, source)
    if frame.height == 0:
        raise DataError(f"{source}: no data rows")
    layout = find_layout(frame, data, source, time_hint)
    where = row_namer(row_offset)
    if layout.format == "long":
        frame, ignored, cuts = pivot_long(frame, data, layout, source, where)
        source_rows = frame.height + sum(cut.rows for cut in cuts)

        def where(index: int) -> str:  # from here on, rows of the pivoted series, not lines of the file
            return f"row {index} of the series pivoted from {layout.id_column!r}"

        frame, cuts = first_rows(frame, data.max_rows, cuts)
    else:
        variables = wide_variables(frame.columns, layout.timestamp, data)
        ignored = [name for name in frame.columns if name not in (layout.timestamp, *variables)]
        source_rows = frame.height
        frame, cuts = first_rows(frame.select(layout.timestamp, *variables), data.max_rows, [])
        frame = frame.with_columns(parse_timestamps(frame[layout.timestamp], layout.timestamp, data.timestamp_format,
                                                    source, where))
        frame = frame.with_columns(parse_numbers(frame, source, where))

    frame, duplicates_dropped = check_order(frame, data.duplicates, source, where)
    if duplicates_dropped:
        cuts = [*cuts, RowCut(setting="data.duplicates", rows=duplicates_dropped)]
    step = infer_step(frame[layout.timestamp], source)
    frame, gaps, rows_inserted = fill_gaps(frame, data.missing, step, source, where)
    frame, values_filled = fill_values(frame, data.missing, source, where)
    missing = Missing(policy=data.missing, duplicates_dropped=duplicates_dropped, gaps=gaps,
                      rows_inserted=rows_inserted, values_filled=values_filled)
    return Series(frame=frame, layout=layout, step=step, missing=missing, source_rows=source_rows, cuts=cuts,
                  ignored_columns=ignored)


def first_rows(frame: pl.DataFrame, max_rows: int | None, cuts: list[RowCut]) -> tuple[pl.DataFrame, list[RowCut]]:
    """data.max_rows: the first rows only, the rest counted as cut."""
    if max_rows is None or frame.height <= max_rows:
        return frame, cuts
    return frame.head(max_rows), [*cuts, RowCut(setting="data.max_rows", rows=frame.height - max_rows)]


def wide_variables(columns: list[str], timestamp: str, data: DataConfig) -> list[str]:
    """The variables of a wide file: data.columns in its order, else every column but the time;
    data.target, when set, last (find_layout has checked that the file has them all)."""
    names = data.columns if data.columns is not None else [name for name in columns if name != timestamp]
    if not names:
        raise DataError(f"{data.path}: no variable columns besides {timestamp!r}")
    if data.target is None:
        return list(names)
    return [name for name in names if name != data.target] + [data.target]


def check_windows(spans: dict[str, Span], data: DataConfig, source: str) -> None:
    """Every split must hold at least one window of every configured horizon."""
    for horizon in data.horizons:
        for split, count in window_counts(spans, data.lookback, horizon).items():
            if count < 1:
                start, end = spans[split]
                hint = "; make data.val_size or data.test_size smaller" if data.split == "rolling" else ""
                raise DataError(f"{source}: split {split!r} (rows [{start}, {end})) is too short for "
                                f"lookback {data.lookback} + horizon {horizon}{hint}")
