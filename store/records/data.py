"""An ingested series: its manifest (datasets/<name>/<fingerprint>/manifest.json) and what
ingestion filled, dropped and kept of its source. store/series.py reads the series itself."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from timedistill.store.record import Record
from timedistill.store.scaler import Scaler

SERIES = "series.parquet"


class Missing(Record):
    """What ingestion filled or dropped, and under which policy."""

    policy: str
    duplicates_dropped: int
    gaps: int
    rows_inserted: int
    values_filled: int


class Lineage(Record):
    """How an ingested version relates to the one ingested before it (none for the first)."""

    previous: str | None = None  # the fingerprint of the version ingested before
    appended_rows: int | None = None  # rows after the previous version's last timestamp
    history_changed: bool | None = None  # a value, a row or a variable of the previous range differs
    first_changed: str | None = None  # the first timestamp that differs


class RowCut(Record):
    """Rows of the source that ingestion did not keep, and the setting that removed them."""

    setting: str  # data.max_rows, data.align (ids on different times), data.duplicates
    rows: int

    def describe(self) -> str:
        return f"{self.setting} removed {self.rows:,}"


class Watermark(Record):
    """How a pull with data.watermark read its source: the rows after `after` were appended to
    the version before, and the stored rows from `overlap_from` on were read again and found
    unchanged. A first pull (or one after the source or the settings changed) read everything."""

    column: str  # the time column the condition was on
    after: str | None = None  # the previous version's end; None: the whole source was read
    overlap_from: str | None = None  # the first stored time read again and compared
    overlap_rows: int = 0  # the stored rows compared
    pulled_rows: int  # rows the source returned


class Dataset(Lineage):
    """An ingested series: its manifest (manifest.json) and where it lives in storage."""

    name: str = Field(alias="dataset")
    fingerprint: str
    source: str  # the file, lake or database it was read from (a password shown as ***)
    # of the file's bytes; of a database's or lake's rows as stored (the series.parquet columns)
    source_sha256: str
    query: str | None = None  # a database's data.query
    watermark: Watermark | None = None  # a pull with data.watermark: how it read the source
    rows: int  # stored: the rows kept, and those inserted into gaps
    source_rows: int  # time steps of the source, before any setting removed some
    cuts: list[RowCut]  # what removed the others
    variables: list[str]  # in the file's order (data.target, when set, last)
    target: str | None
    timestamp: str  # the time column
    format: Literal["wide", "long"]  # as the file was read
    id_column: str | None  # format long: the columns of the ids and the values
    value_column: str | None
    found: str | None  # what was read off the file rather than set: the time column, the layout
    ignored_columns: list[str]  # columns (of a long file: series too) that were not read
    step: str
    start: str
    end: str
    splits: dict[str, tuple[int, int]]  # split -> rows [start, end)
    scaler: Scaler
    missing: Missing
    settings: dict[str, Any]  # the data settings the fingerprint covers
    created: str
    directory: str = Field(exclude=True)  # relative to the storage root
    cached: bool = Field(False, exclude=True)  # an identical earlier ingestion was reused

    @property
    def series_path(self) -> str:
        return f"{self.directory}/{SERIES}"

    @property
    def kept_rows(self) -> int:
        return self.source_rows - sum(cut.rows for cut in self.cuts)

    def kept(self) -> str:
        """'800 of 17,420 rows kept (data.max_rows removed 16,620)', or '' when all were."""
        if not self.cuts:
            return ""
        return f"{self.kept_rows:,} of {self.source_rows:,} rows kept ({', '.join(c.describe() for c in self.cuts)})"

    def describe(self) -> str:
        kept = f" ({self.kept()})" if self.cuts else ""
        return f"{self.name}: {self.rows} rows x {len(self.variables)} variables{kept}, {self.fingerprint}"
