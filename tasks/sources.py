"""Where a series lives when it is not one file: a PostgreSQL database (a table or a SELECT) or a
lake (a folder or glob of Parquet files, hive-partitioned, local or s3://). Each is read into the
raw frame that ingestion parses as it parses a Parquet file; with a lower bound on the time column
(data.watermark), only the rows at or after it are read, the bound pushed down into the query or
the file listing.

A database is read with Polars over ADBC (adbc-driver-postgresql, on libpq: PG* variables and
~/.pgpass apply), its rows streamed batch by batch into a staging Parquet file, so that a pull
holds one batch beside the frame it builds. A lake's partitions are listed, those whose date key
says they hold only older rows are left unopened, and the rest are scanned lazily.

Every error is one line that names the source with its password redacted (conf.uris.redact).
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as postgresql
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from timedistill.conf.schema import DataConfig
from timedistill.conf.uris import REDACTED, TABLE_NAME, is_database, password_of, redact
from timedistill.store.storage import make_filesystem
from timedistill.tasks.errors import DataError
from timedistill.tasks.layout import absent
from timedistill.tasks.reading import fold

Kind = Literal["file", "database", "lake"]
GLOB = ("*", "?", "[")
BATCH_ROWS = 100_000  # rows per batch asked of the driver (ADBC's PostgreSQL driver sizes its own, ~16 MB)
CONNECT_TIMEOUT_S = 10  # an unreachable server is an error after this, unless the URI or PGCONNECT_TIMEOUT says
SHOWN_QUERY = 60  # characters of a SELECT that an error names


class Bound(NamedTuple):
    """Rows whose time column is at or after `start` (naive UTC, as the stored series is)."""

    column: str
    start: datetime


def source_kind(path: str, endpoint_override: str | None = None) -> Kind:
    """A database (postgresql://), a lake (a folder, or a glob, of Parquet files) or a file."""
    if is_database(path):
        return "database"
    if path.endswith("/") or any(char in path for char in GLOB):
        return "lake"
    try:
        fs, inner = make_filesystem(path, endpoint_override if path.startswith("s3://") else None)
        found = fs.get_file_info(inner).type
    except (OSError, ValueError):  # reading the file reports it
        return "file"
    return "lake" if found == pafs.FileType.Directory else "file"


def describe_source(data: DataConfig) -> str:
    """The source as errors name it: the path with its password redacted, and a database's query."""
    if data.query is None:
        return redact(data.path)
    query = " ".join(data.query.split())
    what = f"table {query}" if TABLE_NAME.match(query) else \
        f"query {query[:SHOWN_QUERY] + ('...' if len(query) > SHOWN_QUERY else '')!r}"
    return f"{redact(data.path)} ({what})"


def fetch(data: DataConfig, endpoint_override: str | None, bound: Bound | None, staging: Path) -> pl.DataFrame:
    """The source's rows (those at or after `bound`), as typed columns; `staging` is a folder for
    the pull's temporary files."""
    if is_database(data.path):
        return read_database(data, bound, staging)
    return read_lake(data, endpoint_override, bound)


# ---- a database ------------------------------------------------------------------------------


def read_database(data: DataConfig, bound: Bound | None, staging: Path) -> pl.DataFrame:
    source = describe_source(data)
    query = data.query or ""
    relation = query if TABLE_NAME.match(query) else f"({query.strip().rstrip(';')}) AS source"
    try:
        with connect(data.path, source) as connection:
            condition = ""
            if bound is not None:
                probe = execute(connection, f"SELECT * FROM {relation} LIMIT 0").schema
                condition = f" WHERE {quoted(bound.column)} >= {time_literal(probe, bound, source)}"
            staged = staging / "rows.parquet"
            batches = pl.read_database(f"SELECT * FROM {relation}{condition}", connection, iter_batches=True,
                                       batch_size=BATCH_ROWS)
            schema = stage(batches, staged)
    except adbc_driver_manager.Error as exc:
        raise DataError(f"{source}: {database_problem(exc, data.path)}") from None
    if schema is None:  # no rows: a frame of the result's columns
        return pl.DataFrame()
    return pl.read_parquet(staged)


def connect(uri: str, source: str) -> Any:
    """An ADBC connection; libpq reads what the URI leaves out from PG* variables and ~/.pgpass."""
    if "connect_timeout=" not in uri and "PGCONNECT_TIMEOUT" not in os.environ:
        uri += f"{'&' if '?' in uri else '?'}connect_timeout={CONNECT_TIMEOUT_S}"
    try:
        return postgresql.connect(uri)
    except adbc_driver_manager.Error as exc:
        raise DataError(f"{source}: cannot connect: {database_problem(exc, uri)}") from None


def execute(connection: Any, sql: str) -> pa.Table:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetch_arrow_table()


def quoted(identifier: str) -> str:
    """A column name as SQL writes it exactly (case and all)."""
    return '"' + identifier.replace('"', '""') + '"'


def time_literal(schema: pa.Schema, bound: Bound, source: str) -> str:
    """The bound as a literal of the column's type (a value of ours, never the user's text)."""
    if bound.column not in schema.names:
        raise DataError(f"{source}: {absent(bound.column, 'data.watermark', schema.names)} (columns: {schema.names})")
    kind = schema.field(bound.column).type
    stamp = bound.start.isoformat(sep=" ")
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        return f"TIMESTAMPTZ '{stamp}+00:00'"
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return f"TIMESTAMP '{stamp}'"
    raise DataError(f"{source}: column {bound.column!r} holds {kind} values; data.watermark needs a date or "
                    f"timestamp column to compare (cast it in data.query: SELECT {bound.column}::timestamp AS "
                    f"{bound.column}, ...)")


def stage(batches: Any, path: Path) -> pa.Schema | None:
    """Each batch into one Parquet file as it arrives (so the driver's batches never pile up in
    memory); a column of an extension type (PostgreSQL's numeric) as its storage (text). The
    schema written, or None when no batch came."""
    writer: pq.ParquetWriter | None = None
    try:
        for frame in batches:
            table = plain(frame.to_arrow())
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="lz4")
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
    return writer.schema if writer is not None else None


def plain(table: pa.Table) -> pa.Table:
    """Extension columns (numeric arrives as an opaque text extension) as their storage."""
    for index, field in enumerate(table.schema):
        if isinstance(field.type, pa.BaseExtensionType):
            storage = pa.chunked_array([chunk.storage for chunk in table.column(index).chunks],
                                       type=field.type.storage_type)
            table = table.set_column(index, pa.field(field.name, storage.type), storage)
    return table.replace_schema_metadata(None)


def database_problem(exc: BaseException, uri: str) -> str:
    """The server's or libpq's message, without the driver's status codes and the query echoed."""
    text = fold(exc)
    for marker in ("ERROR:  ", "FATAL:  "):
        if marker in text:
            text = text.split(marker, 1)[1]
    for noise in ("[libpq] ", "Failed to connect: ", "Failed to prepare query: "):
        text = text.replace(noise, "")
    code, colon, rest = text.partition(": ")
    if colon and code.isupper() and code.replace("_", "").isalpha():
        text = rest
    secret = password_of(uri)
    return text.replace(secret, REDACTED) if secret else text


# ---- a lake ----------------------------------------------------------------------------------


def read_lake(data: DataConfig, endpoint_override: str | None, bound: Bound | None) -> pl.DataFrame:
    source = describe_source(data)
    files = lake_files(data.path, endpoint_override, source)
    if bound is not None:
        files = [file for file in files if could_hold(file, bound.start.date())]
        if not files:
            return pl.DataFrame()
    options = storage_options(endpoint_override) if data.path.startswith("s3://") else None
    try:
        scan = pl.scan_parquet([file.uri for file in files], hive_partitioning=True, storage_options=options)
        if bound is not None:
            schema = scan.collect_schema()
            if bound.column not in schema:
                raise DataError(f"{source}: {absent(bound.column, 'data.watermark', schema.names())} (columns: "
                                f"{schema.names()})")
            scan = scan.filter(pl.col(bound.column) >= bound_value(schema[bound.column], bound, source))
        keys = {key for file in files for key in file.partitions} - named_columns(data)
        return scan.drop(*keys, strict=False).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{source}: cannot read: {fold(exc)}") from None


def named_columns(data: DataConfig) -> set[str]:
    """The columns a config names: a partition key among them is read, the others are not."""
    return {name for name in (data.timestamp, data.target, data.id_column, data.value_column, *(data.columns or []))
            if name is not None}


class LakeFile(NamedTuple):
    uri: str  # as Polars reads it: an absolute path, or s3://bucket/key
    partitions: dict[str, str]  # the hive keys of its folders: {"date": "2026-12-01"}


def lake_files(path: str, endpoint_override: str | None, source: str) -> list[LakeFile]:
    """The Parquet files of a folder (every one under it) or of a glob, by a listing: no file is opened."""
    remote = "://" in path
    first_glob = min((path.index(char) for char in GLOB if char in path), default=len(path))
    root = path[:first_glob].rsplit("/", 1)[0] if first_glob < len(path) else path.rstrip("/")
    try:
        fs, inner = make_filesystem(root, endpoint_override if path.startswith("s3://") else None)
        listing = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot list: {fold(exc)}") from None
    pattern = inner + path[len(root):] if first_glob < len(path) else None
    files = []
    for entry in sorted(listing, key=lambda info: info.path):
        if entry.type != pafs.FileType.File or not entry.path.endswith(".parquet"):
            continue
        if pattern is not None and not fnmatch.fnmatchcase(entry.path, pattern):
            continue
        relative = entry.path[len(inner):].strip("/").split("/")[:-1]
        partitions = dict(part.split("=", 1) for part in relative if "=" in part)
        uri = f"{path.split('://', 1)[0]}://{entry.path}" if remote else entry.path
        files.append(LakeFile(uri, partitions))
    if not files:
        raise DataError(f"{source}: no Parquet files found (a folder of them, hive-partitioned as "
                        "date=2026-12-01/part-0.parquet, or a glob)")
    return files


def could_hold(file: LakeFile, since: date) -> bool:
    """Whether a file may hold rows on or after `since`: not when a partition key of dates
    (date=2026-12-01, each file holding the rows of its day) says it is older."""
    for value in file.partitions.values():
        try:
            day = date.fromisoformat(value)
        except ValueError:
            continue
        if day < since:
            return False
    return True


def bound_value(kind: pl.DataType, bound: Bound, source: str) -> pl.Expr:
    """The bound as a literal of the column's type."""
    if isinstance(kind, pl.Datetime):
        start = pl.lit(bound.start).dt.cast_time_unit(kind.time_unit or "us")
        return start.dt.replace_time_zone("UTC").dt.convert_time_zone(kind.time_zone) if kind.time_zone else start
    if isinstance(kind, pl.Date):
        return pl.lit(bound.start).cast(pl.Date)
    raise DataError(f"{source}: column {bound.column!r} holds {kind} values; data.watermark needs a date or "
                    "timestamp column to compare")


def storage_options(endpoint_override: str | None) -> dict[str, str]:
    """Polars' object-store options for s3://: the storage's endpoint (an S3-compatible store);
    credentials and the region come from the usual AWS variables."""
    options = {"aws_region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint_override:
        options["aws_endpoint_url"] = endpoint_override
        if endpoint_override.startswith("http://"):
            options["aws_allow_http"] = "true"
    return options


def staging_dir() -> tempfile.TemporaryDirectory[str]:
    """A local folder for a pull's staged rows, removed with them when the pull ends."""
    return tempfile.TemporaryDirectory(prefix="timedistill-pull-")
