"""A file of one's own, as people's files come: its time column and layout read off it, every row a
setting did not keep said, missing values handled by data.missing, and every broken file a one-line
error that names the file and the place (no Ray, no Prefect: ingestion alone)."""

from __future__ import annotations

import gzip
import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from timedistill.conf import load_config
from timedistill.conf.loading import data_file_overrides
from timedistill.conf.uris import dataset_name
from timedistill.flows.cli import app
from timedistill.store.storage import Storage
from timedistill.tasks.errors import DataError
from timedistill.tasks.ingest import MANIFEST, ingest

runner = CliRunner()
START = datetime(2024, 1, 1)


def config_for(path: Path, root: Path, *extra: str):
    return load_config(None, [*data_file_overrides(str(path)), "data.lookback=4", "data.horizons=[2]",
                              f"storage.root={root}", *extra])


def stamps(rows: int, step: timedelta = timedelta(hours=1)) -> list[datetime]:
    return [START + k * step for k in range(rows)]


def wide(rows: int = 40, time: str = "timestamp") -> pl.DataFrame:
    return pl.DataFrame({time: stamps(rows), "load": np.arange(rows, dtype=float), "temp": np.arange(rows) * 0.5})


def long(ids: tuple[str, ...] = ("north", "south", "west"), rows: int = 40,
         names: tuple[str, str, str] = ("unique_id", "ds", "y")) -> pl.DataFrame:
    id_name, time, value = names
    return pl.concat([pl.DataFrame({id_name: [uid] * rows, time: stamps(rows), value: np.arange(rows) + 100.0 * i})
                      for i, uid in enumerate(ids)])


def ingested(tmp_path: Path, frame_or_text, name: str = "mine.csv", *extra: str):
    path = tmp_path / name
    if isinstance(frame_or_text, pl.DataFrame):
        frame_or_text.write_parquet(path) if name.endswith(".parquet") else frame_or_text.write_csv(path)
    elif isinstance(frame_or_text, bytes):
        path.write_bytes(frame_or_text)
    else:
        path.write_text(frame_or_text)
    return ingest(config_for(path, tmp_path / "art", *extra), Storage(str(tmp_path / "art")))


def one_line_error(tmp_path: Path, content, name: str = "bad.csv", *extra: str) -> str:
    with pytest.raises(DataError) as info:
        ingested(tmp_path, content, name, *extra)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / name)), message
    assert not list((tmp_path / "art" / "datasets" / dataset_name(name)).rglob(MANIFEST))  # nothing written
    return message


# ---- read off the file ----------------------------------------------------------------------------
def test_a_wide_file_is_read_with_no_settings_and_named_after_itself(tmp_path):
    dataset = ingested(tmp_path, wide(), "My Load.csv")
    assert (dataset.name, dataset.timestamp, dataset.format) == ("my-load", "timestamp", "wide")
    assert dataset.variables == ["load", "temp"] and dataset.target is None  # every variable, in the file's order
    assert dataset.found == "time column 'timestamp'" and dataset.rows == dataset.source_rows == 40


@pytest.mark.parametrize("names", [("unique_id", "ds", "y"), ("id", "date", "value")])
def test_a_long_file_is_recognised_by_its_columns(tmp_path, names):
    dataset = ingested(tmp_path, long(names=names))
    assert dataset.format == "long" and (dataset.id_column, dataset.value_column) == (names[0], names[2])
    assert dataset.timestamp == names[1] and dataset.variables == ["north", "south", "west"]
    assert "long layout" in dataset.found


def test_configured_long_names_and_a_parquet_time_column_of_any_name(tmp_path):
    frame = long(names=("sensor", "when", "reading"))
    dataset = ingested(tmp_path, frame, "sensors.parquet", "data.id_column=sensor", "data.value_column=reading")
    assert (dataset.format, dataset.timestamp, dataset.variables) == ("long", "when", ["north", "south", "west"])


def test_columns_beside_the_long_ones_are_said_not_read(tmp_path):
    frame = long().with_columns(pl.lit("x").alias("note"))
    assert ingested(tmp_path, frame).ignored_columns == ["note"]


def test_every_column_problem_at_once_with_close_matches(tmp_path):
    message = one_line_error(tmp_path, wide(time="date"), "bad.csv", "data.timestamp=Date", "data.target=lod",
                             "data.columns=[temp, Tmp]")
    assert "no column 'Date' (data.timestamp; did you mean 'date'?)" in message
    assert "no column 'lod' (data.target; did you mean 'load'?)" in message
    assert "no column 'Tmp' (data.columns; did you mean 'temp'?)" in message


def test_no_date_column_or_several_of_them_are_one_line_errors(tmp_path):
    assert "no column holds dates" in one_line_error(tmp_path, "a,b\n1,2\n3,4\n")
    both = wide(time="created").with_columns(pl.col("created").alias("updated"))
    message = one_line_error(tmp_path, both, "two.parquet")
    assert "several columns hold dates ('created', 'updated'); set data.timestamp" in message


def test_the_data_option_reads_a_file_with_any_config(tmp_path):
    path = tmp_path / "my_load.csv"
    long().write_csv(path)
    result = runner.invoke(app, ["ingest", "etth1", "--data", str(path), "--set", f"storage.root={tmp_path}",
                                 "--set", "data.lookback=4", "--set", "data.horizons=[2]", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["dataset"] == "my_load" and summary["variables"] == ["north", "south", "west"]
    assert summary["format"] == "long" and summary["timestamp"] == "ds"
    # etth1's calendar split does not fit another file: the default ratio split does
    assert summary["splits"]["train"]["rows"] == [0, 28]
    assert "data.split=ratio" in data_file_overrides(str(path), load_config("etth1").data)


def test_dataset_names_from_file_names():
    assert dataset_name("s3://bucket/Sales 2024.csv.gz") == "sales-2024"
    assert dataset_name("/data/_.csv") == "data"


# ---- no silent limits ---------------------------------------------------------------------------
def test_rows_a_setting_did_not_keep_are_counted_in_the_summary_json_and_manifest(tmp_path):
    dataset = ingested(tmp_path, wide(100), "mine.csv", "data.max_rows=60")
    assert (dataset.rows, dataset.source_rows, dataset.kept_rows) == (60, 100, 60)
    assert dataset.kept() == "60 of 100 rows kept (data.max_rows removed 40)"
    manifest = json.loads((tmp_path / "art" / dataset.directory / MANIFEST).read_text())
    assert manifest["source_rows"] == 100 and manifest["cuts"] == [{"setting": "data.max_rows", "rows": 40}]
    result = runner.invoke(app, ["ingest", "smoke", "--set", f"storage.root={tmp_path / 'cli'}"])
    assert result.exit_code == 0 and "800 of 17,420 rows kept (data.max_rows removed 16,620)" in result.stdout


def test_times_an_inner_alignment_drops_are_counted(tmp_path):
    frame = pl.concat([long(("a", "b"), rows=40), long(("c",), rows=30)])
    dataset = ingested(tmp_path, frame)
    assert (dataset.source_rows, dataset.rows) == (40, 30)
    assert [(cut.setting, cut.rows) for cut in dataset.cuts] == [("data.align", 10)]


# ---- missing values and timestamps --------------------------------------------------------------
NAN_CSV = "date,a,b\n" + "\n".join(f"{t:%Y-%m-%d %H:%M:%S},{i},{'nan' if i == 7 else 2 * i}"
                                   for i, t in enumerate(stamps(40))) + "\n"


def test_nan_and_empty_cells_are_missing_values_that_data_missing_handles(tmp_path):
    message = one_line_error(tmp_path, NAN_CSV)
    assert "1 missing value(s); the first in column 'b', line 9" in message and "data.missing" in message
    filled = ingested(tmp_path, NAN_CSV, "ok.csv", "data.missing=interpolate")
    assert filled.missing.values_filled == 1
    series = pl.read_parquet(tmp_path / "art" / filled.series_path)
    assert series["b"][7] == pytest.approx(14.0)  # between 12 and 16
    empty = NAN_CSV.replace(",nan", ",")
    assert ingested(tmp_path, empty, "empty.csv", "data.missing=ffill").missing.values_filled == 1
    parquet = wide().with_columns(pl.when(pl.int_range(0, 40) == 3).then(float("nan")).otherwise(pl.col("load"))
                                  .alias("load"))
    assert "missing value" in one_line_error(tmp_path, parquet, "nan.parquet")


@pytest.mark.parametrize("frame", [
    wide().with_columns(pl.when(pl.int_range(0, 40) == 5).then(None).otherwise(pl.col("timestamp")).alias("timestamp")),
    long().with_columns(pl.when(pl.int_range(0, 120) == 50).then(None).otherwise(pl.col("ds")).alias("ds")),
], ids=["wide", "long"])
def test_a_null_timestamp_is_refused_in_every_layout(tmp_path, frame):
    assert "no timestamp in column" in one_line_error(tmp_path, frame, "nulls.parquet")


def test_an_empty_timestamp_cell_is_refused(tmp_path):
    text = NAN_CSV.replace(",nan", ",1").replace("2024-01-01 05:00:00", "")
    assert re.search(r"line 7: no timestamp in column 'date'", one_line_error(tmp_path, text))


# ---- files as they come -------------------------------------------------------------------------
def test_cr_line_endings_and_gzip_are_read(tmp_path):
    text = NAN_CSV.replace(",nan", ",1")
    assert ingested(tmp_path, text.replace("\n", "\r"), "mac.csv").rows == 40
    assert ingested(tmp_path, gzip.compress(text.encode()), "packed.csv").rows == 40


def test_broken_files_are_one_line_errors_in_our_words(tmp_path):
    text = NAN_CSV.replace(",nan", ",1")
    quoted = '"da\nte",a,b\n' + text.split("\n", 1)[1]
    assert "the header's column 'da\\nte' holds a line break" in one_line_error(tmp_path, quoted)
    latin = text.replace("date,a,b", "date,a\xb0,b").encode("latin-1")
    assert "the header is not UTF-8 (byte 0xb0" in one_line_error(tmp_path, latin)
    ragged = text.replace("2024-01-01 03:00:00,3,6", "2024-01-01 03:00:00,3,6,9")
    message = one_line_error(tmp_path, ragged)
    assert "line 5 has 4 fields, the header 3" in message and "truncate_ragged_lines" not in message
    big = text.replace("2024-01-01 03:00:00,3,6", "2024-01-01 03:00:00," + "x" * 2_000_000 + ",6")
    message = one_line_error(tmp_path, big)
    assert "is not a number" in message and len(message) < len(str(tmp_path)) + 200
    lists = wide().with_columns(pl.concat_list("timestamp", "timestamp").alias("timestamp"))
    assert "column 'timestamp' holds List(Datetime" in one_line_error(
        tmp_path, lists, "lists.parquet", "data.timestamp=timestamp")
    assert "a zip archive" in one_line_error(tmp_path, b"PK\x03\x04rest")
