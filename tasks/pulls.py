"""A pull: a database's or a lake's rows (tasks/sources.py) made a dataset version, parsed and
stored as a file's are (tasks/ingest.py).

Without data.watermark, or the first time, or once the source, the query or the data settings
changed, a pull reads the whole source. With data.watermark and a stored version of the same
source and settings, it reads only the rows at or after the stored series' last
`data.watermark_overlap` steps: the older of them (the overlap) must be what is stored, or the pull
is an error naming the first timestamp that differs, since the source has lost or rewritten rows
already pulled; the newer are appended to the stored series as a new version. Either way the
version is what a full read of the source would store: new rows are put on the grid after the
stored ones (a gap between them is filled or refused as in a file), and their missing values are
filled from the stored rows before them.

The fingerprint of a pulled version is a hash of its rows as stored (and of the data settings),
so that an unchanged source is the same version, whether it was read whole or in increments.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import polars as pl

from timedistill.conf import FORMAT, Config, DataConfig, stable_hash
from timedistill.conf.spans import duration
from timedistill.conf.uris import redact
from timedistill.store.record import read_record
from timedistill.store.records import Dataset, Lineage, Missing, RowCut, Watermark
from timedistill.store.storage import Storage
from timedistill.tasks.errors import DataError
from timedistill.tasks.ingest import (
    LATEST,
    MANIFEST,
    Origin,
    Rows,
    Series,
    as_stored,
    dataset_dir,
    fingerprint_settings,
    history_difference,
    on_grid,
    read_rows,
    reuse,
    store,
)
from timedistill.tasks.layout import Layout
from timedistill.tasks.sources import Bound, describe_source, fetch, staging_dir
from timedistill.tasks.values import parse_timestamps, row_namer

LOST = ("the source has lost or rewritten rows already pulled (a pull without data.watermark reads it whole, as a "
        "new truth)")


class Stored(NamedTuple):
    """The version a pull with data.watermark appends to, and its series."""

    dataset: Dataset
    frame: pl.DataFrame


def pull(config: Config, storage: Storage) -> Dataset:
    """Read `config.data`'s database or lake (only what is new, with data.watermark) and store
    the result as a version of the dataset; reuse the version it amounts to when there is one."""
    data = config.data
    reading = data.model_copy(update={"path": describe_source(data)})  # what parsing names in its errors
    previous = appendable(storage, data) if data.watermark is not None else None
    with staging_dir() as staging:
        if previous is None:
            return whole(storage, data, reading, fetch(data, config.storage.endpoint_override, None, Path(staging)))
        stamps = previous.frame[previous.dataset.timestamp]
        bound = Bound(previous.dataset.timestamp, stamps[max(0, len(stamps) - data.watermark_overlap)])
        raw = fetch(data, config.storage.endpoint_override, bound, Path(staging))
        return increment(storage, data, reading, raw, previous, bound)


def whole(storage: Storage, data: DataConfig, reading: DataConfig, raw: pl.DataFrame) -> Dataset:
    """The whole source as a version, compared with the one before as a file's would be."""
    rows = read_rows(raw, 0, reading)
    series = on_grid(rows._replace(frame=rows.frame.sort(rows.layout.timestamp, maintain_order=True)), reading)
    series = series._replace(frame=as_stored(series.frame))
    watermark = Watermark(column=data.watermark, pulled_rows=raw.height) if data.watermark is not None else None
    return version(storage, data, reading.path, series, watermark, lineage=None)


def increment(storage: Storage, data: DataConfig, reading: DataConfig, raw: pl.DataFrame, previous: Stored,
              bound: Bound) -> Dataset:
    """The stored version with the rows after its end appended, once the overlap is found unchanged."""
    known, old = previous.dataset, previous.frame
    stamp, end = known.timestamp, old[known.timestamp][-1]
    # the layout the stored version was read with, rather than one read off a few new rows
    reading = reading.model_copy(update={"format": known.format, "id_column": known.id_column,
                                         "value_column": known.value_column, "timestamp": stamp})
    if raw.height == 0:
        raise DataError(f"{reading.path}: it has no row at or after {bound.start}, where the stored series has rows "
                        f"up to {end} (previous version {known.fingerprint}): {LOST}")
    times = parse_timestamps(raw[stamp], stamp, None, reading.path, row_namer(0))
    newer = times > end
    overlap = old.filter(pl.col(stamp) >= bound.start)
    layout = Layout(timestamp=stamp, format=known.format, id_column=known.id_column, value_column=known.value_column,
                    found=known.found)
    series = Series(frame=old, layout=layout, step=duration(known.step), missing=known.missing,
                    source_rows=known.source_rows, cuts=known.cuts, ignored_columns=known.ignored_columns)
    check_overlap(reading, raw.filter(~newer), times.filter(~newer), overlap, series, known)
    if newer.any():
        added = on_grid_after(reading, read_rows(raw.filter(newer), 0, reading), old.tail(1), series)
        series = series._replace(frame=pl.concat([old, as_stored(added.frame)]),
                                 missing=add_missing(known.missing, added.missing),
                                 source_rows=known.source_rows + added.source_rows,
                                 cuts=merge_cuts(known.cuts, added.cuts))
    watermark = Watermark(column=stamp, after=str(end), overlap_from=str(bound.start), overlap_rows=overlap.height,
                          pulled_rows=raw.height)
    lineage = Lineage(previous=known.fingerprint, appended_rows=series.frame.height - old.height,
                      history_changed=False, first_changed=None)
    return version(storage, data, reading.path, series, watermark, lineage)


def check_overlap(reading: DataConfig, raw: pl.DataFrame, times: pl.Series, overlap: pl.DataFrame, stored: Series,
                  known: Dataset) -> None:
    """The source's rows over the overlap (`raw`, at `times`) must be the stored ones, after the
    same filling."""
    stamp, old = known.timestamp, stored.frame
    first = overlap[stamp][0]
    if known.missing.rows_inserted == 0:  # every stored row came from the source: none may be gone
        lost = overlap.filter(~pl.col(stamp).is_in(times.implode()))
        if lost.height:
            raise DataError(f"{reading.path}: it has no row at {lost[stamp][0]}, which the stored series has "
                            f"(previous version {known.fingerprint}, compared from {first}): {LOST}")
    if raw.height == 0:
        raise DataError(f"{reading.path}: it has no row at {first}, which the stored series has (previous version "
                        f"{known.fingerprint}): {LOST}")
    read = on_grid_after(reading, read_rows(raw, 0, reading), old.filter(pl.col(stamp) < first).tail(1), stored)
    difference = history_difference(overlap, as_stored(read.frame))
    extra = read.frame.filter(~pl.col(stamp).is_in(overlap[stamp].implode()))
    if difference is not None:
        problem = difference.problem.replace("the previous version", "the stored series")
    elif extra.height:
        problem = f"it has a row at {extra[stamp][0]}, which the stored series does not"
    else:
        return
    raise DataError(f"{reading.path}: {problem} (previous version {known.fingerprint}, compared from {first}): {LOST}")


def on_grid_after(reading: DataConfig, rows: Rows, before: pl.DataFrame, stored: Series) -> Series:
    """Rows put on the stored series' grid after `before` (the stored row just before them, or
    none): a gap from it is filled or refused, missing values are filled from it, and it is left
    out again."""
    frame = rows.frame.sort(stored.layout.timestamp, maintain_order=True)
    context = before.cast({name: pl.Float64 for name in before.columns[1:]})
    if frame.columns != context.columns:
        raise DataError(f"{reading.path}: its columns are {frame.columns}, the stored series' {context.columns}")
    shift = context.height

    def where(index: int) -> str:
        return rows.where(index - shift)

    series = on_grid(rows._replace(frame=pl.concat([context, frame]), where=where), reading, stored.step)
    return series._replace(frame=series.frame.slice(shift))


def appendable(storage: Storage, data: DataConfig) -> Stored | None:
    """The LATEST version, when a pull may append to it: made by a pull of the same source, query,
    watermark and data settings."""
    pointer = f"datasets/{data.name}/{LATEST}"
    if not storage.exists(pointer):
        return None
    fingerprint = storage.read_bytes(pointer).decode().strip()
    directory = dataset_dir(data, fingerprint)
    if not storage.exists(f"{directory}/{MANIFEST}"):
        return None
    known = read_record(storage, f"{directory}/{MANIFEST}", Dataset, directory=directory)
    same = (known.watermark is not None and known.watermark.column == data.watermark
            and known.source == redact(data.path) and known.query == data.query
            and known.settings == fingerprint_settings(data))
    if not same:
        return None
    return Stored(known, pl.DataFrame(storage.read_parquet(known.series_path)))


def version(storage: Storage, data: DataConfig, source: str, series: Series, watermark: Watermark | None,
            lineage: Lineage | None) -> Dataset:
    """The version these rows are: found by their fingerprint, or stored."""
    fingerprint, digest = rows_fingerprint(series.frame, data)
    found = reuse(storage, data, fingerprint, source)
    if found is not None:
        return found
    origin = Origin(fingerprint, redact(data.path), digest, query=data.query, watermark=watermark)
    return store(storage, data.model_copy(update={"path": source}), series, origin, lineage)


def rows_fingerprint(frame: pl.DataFrame, data: DataConfig) -> tuple[str, str]:
    """(the version's fingerprint, the sha256 of its rows as stored: each column's name and values)."""
    digest = hashlib.sha256()
    for name in frame.columns:
        digest.update(name.encode() + b"\0")
        digest.update(frame[name].to_numpy().tobytes())
    sha = digest.hexdigest()
    return stable_hash({"rows_sha256": sha, "settings": fingerprint_settings(data), "format": FORMAT})[:16], sha


def add_missing(before: Missing, added: Missing) -> Missing:
    return Missing(policy=added.policy, duplicates_dropped=before.duplicates_dropped + added.duplicates_dropped,
                   gaps=before.gaps + added.gaps, rows_inserted=before.rows_inserted + added.rows_inserted,
                   values_filled=before.values_filled + added.values_filled)


def merge_cuts(before: list[RowCut], added: list[RowCut]) -> list[RowCut]:
    """Rows each setting removed, over the versions so far."""
    totals: dict[str, int] = {}
    for cut in [*before, *added]:
        totals[cut.setting] = totals.get(cut.setting, 0) + cut.rows
    return [RowCut(setting=setting, rows=rows) for setting, rows in totals.items()]
