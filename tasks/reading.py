"""Raw bytes to a frame: CSV (plain or gzip-compressed) or Parquet, as people's files come.

Everything a file can be wrong in before its columns mean anything is caught here and said in
one line naming the file and the line: an encoding that is not UTF-8 (the header's included), a
zip archive, CR-only line endings (read, as old spreadsheet exports write them), a ragged row, a
header that names a column twice or breaks a name over two lines. Polars' own messages, several
lines long and written for its API, never reach the user.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib

import polars as pl
import pyarrow.fs as pafs

from timedistill.store.storage import make_filesystem
from timedistill.tasks.errors import DataError

SHOWN = 80  # characters of a value echoed in an error
GZIP, ZIP, PARQUET = b"\x1f\x8b", b"PK\x03\x04", b"PAR1"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
CSV_FIRST_LINE = 2  # data row 0 is on line 2 of a CSV file (line 1 is the header)


def shown(value: object) -> str:
    """A value as an error message echoes it: its repr, cut to SHOWN characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def fold(exc: BaseException) -> str:
    """A library's message as one short line: its first line, without the advice on options of
    its API that our users cannot set."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    for advice in (" You might want to try", " Consider ", " Hint:"):
        first = first.split(advice, 1)[0]
    return first if len(first) <= 200 else first[:197] + "..."


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



def read_table(content: bytes, source: str) -> tuple[pl.DataFrame, int]:
    """(the raw frame, the offset that turns a row index into its line of the file: 0 for
    Parquet). A CSV file's columns are all read as text, so that errors can name the raw value."""
    if content[:2] == GZIP:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{source}: a gzip file that does not decompress: {fold(exc)}") from None
    if content[:4] == ZIP:
        raise DataError(f"{source}: a zip archive; unpack it and give the CSV or Parquet file inside")
    if content[:4] == PARQUET:
        try:
            return pl.read_parquet(io.BytesIO(content)), 0
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(f"{source}: cannot read as Parquet: {fold(exc)}") from None
    return read_csv(text_of(content, source), source), CSV_FIRST_LINE


def text_of(content: bytes, source: str) -> str:
    """The file as text: UTF-8 (with or without a byte-order mark), lines ending in \\n."""
    if content[:2] in UTF16_BOMS:
        raise DataError(f"{source}: the file is UTF-16 text; save it as UTF-8")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        where = "the header" if line == 1 else f"line {line}"
        raise DataError(f"{source}: {where} is not UTF-8 (byte 0x{content[exc.start]:02x}; Latin-1 or Windows-1252 "
                        "text, perhaps): save the file as UTF-8") from None
    if "\r" in text and "\n" not in text:  # classic Mac line endings
        text = text.replace("\r", "\n")
    return text


def read_csv(text: str, source: str) -> pl.DataFrame:
    if not text.strip():
        raise DataError(f"{source}: file is empty")
    header = header_of(text, source)
    try:
        frame = pl.read_csv(io.StringIO(text), infer_schema=False, has_header=True, new_columns=header)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{source}: {ragged_row(text, len(header)) or 'cannot parse as CSV: ' + fold(exc)}") from None
    blank = frame.select(pl.all_horizontal(pl.all().is_null() | (pl.all().str.strip_chars() == ""))).to_series()
    kept = blank.not_().arg_true()
    return frame.head(int(kept[-1]) + 1 if len(kept) else 0)  # blank lines at the end are not rows


def header_of(text: str, source: str) -> list[str]:
    """The column names of the first record, checked: Polars would silently rename a repeated
    one (HUFL_duplicated_0)."""
    try:
        names = [name.strip() for name in next(csv.reader(io.StringIO(text)))]
    except (csv.Error, StopIteration) as exc:
        raise DataError(f"{source}: the header does not read as CSV: {fold(exc)}") from None
    broken = [name for name in names if "\n" in name or "\r" in name]
    if broken:
        raise DataError(f"{source}: the header's column {shown(broken[0])} holds a line break")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{source}: the header names column(s) {repeated} more than once")
    return names


def ragged_row(text: str, fields: int) -> str | None:
    """Where a row has another number of fields than the header, in our words (read again with
    the csv module only once Polars has failed)."""
    reader = csv.reader(io.StringIO(text))
    try:
        for record in reader:
            if record and len(record) != fields:
                return f"line {reader.line_num} has {len(record)} fields, the header {fields}"
    except csv.Error as exc:
        return f"line {reader.line_num} does not read as CSV: {fold(exc)}"
    return None
