"""Ingestion: the real benchmark files (TIMEDISTILL_BENCHMARK_DATA, when set), and every kind of bad input
on tiny files."""

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from timedistill.conf import load_config
from timedistill.flows.cli import app
from timedistill.store.records import SERIES
from timedistill.store.storage import Storage
from timedistill.tasks.errors import DataError
from timedistill.tasks.ingest import ingest

runner = CliRunner()


def config_for(path: Path, root: Path, *extra: str):
    return load_config(None, [f"data.path={path}", "data.name=toy", "data.lookback=4",
                              "data.horizons=[2]", f"storage.root={root}", *extra])


def write_csv(tmp_path: Path, text: str, name: str = "toy.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def hourly(rows: int, start: str = "2020-01-01 00:00:00") -> list[str]:
    stamps = pl.datetime_range(pl.lit(start).str.to_datetime(), pl.lit(start).str.to_datetime()
                               + pl.duration(hours=rows - 1), "1h", eager=True)
    return [f"{t:%Y-%m-%d %H:%M:%S},{i},{2 * i + 1}" for i, t in enumerate(stamps)]


def toy_text(rows: int = 40) -> str:
    return "date,a,OT\n" + "\n".join(hourly(rows)) + "\n"


def test_etth1_counts_match_the_protocol(tmp_path):
    config = load_config("etth1", [f"storage.root={tmp_path}"])
    result = runner.invoke(app, ["ingest", "etth1", "--set", f"storage.root={tmp_path}", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 17420
    assert summary["variables"] == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert summary["step"] == "1h"
    assert summary["splits"]["train"]["rows"] == [0, 8640]
    assert summary["splits"]["val"]["rows"] == [8640, 11520]
    assert summary["splits"]["test"]["rows"] == [11520, 14400]
    windows = {split: info["windows"]["96"] for split, info in summary["splits"].items()}
    assert windows == {"train": 7825, "val": 2785, "test": 2785}
    # the scaler is fitted on the train rows only
    frame = pl.read_csv(config.data.path).head(8640)
    assert np.allclose(summary["scaler"]["mean"], frame.drop("date").mean().row(0), rtol=1e-6)
    assert np.allclose(summary["scaler"]["std"], frame.drop("date").std(ddof=0).row(0), rtol=1e-6)
    # the stored series is timestamp + float32 columns
    series = pl.read_parquet(summary["path"])
    assert series.columns[0] == "date" and series.dtypes[0] == pl.Datetime
    assert all(dtype == pl.Float32 for dtype in series.dtypes[1:])
    # the same input is not ingested twice
    again = runner.invoke(app, ["ingest", "etth1", "--set", f"storage.root={tmp_path}", "--json"])
    assert json.loads(again.stdout.strip().splitlines()[-1])["cached"] is True


def test_weather_ingests_with_its_quirks(benchmark_data, tmp_path):
    """CRLF line endings, U+FFFD in the header, one repeated row and one 100-minute gap."""
    config = load_config("weather", [f"data.path={benchmark_data / 'weather.csv'}", f"storage.root={tmp_path}"])
    dataset = ingest(config, Storage(str(tmp_path)))
    assert len(dataset.variables) == 21 and dataset.variables[-1] == "OT"
    assert "SWDR (W/m\ufffd)" in dataset.variables
    assert dataset.step == "10min"
    assert dataset.missing.to_json() == {"policy": "interpolate", "duplicates_dropped": 1, "gaps": 1,
                                         "rows_inserted": 9, "values_filled": 189}
    assert dataset.rows == 52696 - 1 + 9


def test_slash_dates_and_no_trailing_newline(benchmark_data, tmp_path):
    config = load_config("exchange", [f"data.path={benchmark_data / 'exchange_rate.csv'}",
                                      f"storage.root={tmp_path}"])
    dataset = ingest(config, Storage(str(tmp_path)))
    assert dataset.rows == 7588 and dataset.step == "1d"
    assert dataset.start.startswith("1990-01-01")


def test_fingerprint_changes_with_content_and_settings(tmp_path):
    path = write_csv(tmp_path, toy_text())
    storage = Storage(str(tmp_path / "art"))
    first = ingest(config_for(path, tmp_path / "art"), storage)
    assert ingest(config_for(path, tmp_path / "art"), storage).cached
    other_windows = ingest(config_for(path, tmp_path / "art", "data.horizons=[3]"), storage)
    assert other_windows.fingerprint == first.fingerprint  # windows are not part of the series
    changed = ingest(config_for(path, tmp_path / "art", "data.max_rows=30"), storage)
    assert changed.fingerprint != first.fingerprint
    path.write_text(toy_text(41))
    assert ingest(config_for(path, tmp_path / "art"), storage).fingerprint != first.fingerprint


def test_variables_keep_the_files_order_a_target_goes_last_and_columns_can_be_selected(tmp_path):
    text = "date,OT,b,a\n" + "\n".join(f"{line},{i}" for i, line in enumerate(hourly(40))) + "\n"
    path = write_csv(tmp_path, text)
    dataset = ingest(config_for(path, tmp_path / "art"), Storage(str(tmp_path / "art")))
    assert dataset.variables == ["OT", "b", "a"] and dataset.target is None
    targeted = ingest(config_for(path, tmp_path / "art", "data.target=OT"), Storage(str(tmp_path / "art")))
    assert targeted.variables == ["b", "a", "OT"]
    picked = ingest(config_for(path, tmp_path / "art", "data.columns=[a]", "data.target=OT"),
                    Storage(str(tmp_path / "art")))
    assert picked.variables == ["a", "OT"] and picked.ignored_columns == ["b"]


def test_parquet_input_and_bom_crlf_header(tmp_path):
    frame = pl.DataFrame({"date": pl.datetime_range(pl.datetime(2021, 1, 1), pl.datetime(2021, 1, 2, 15),
                                                    "1h", eager=True)})
    frame = frame.with_columns(a=pl.int_range(0, frame.height), OT=pl.int_range(0, frame.height) * 0.5)
    frame.write_parquet(tmp_path / "toy.parquet")
    dataset = ingest(config_for(tmp_path / "toy.parquet", tmp_path / "art"), Storage(str(tmp_path / "art")))
    assert dataset.rows == 40
    crlf = ("\ufeffdate, a ,OT\r\n" + "\r\n".join(hourly(40)) + "\r\n").encode()
    (tmp_path / "crlf.csv").write_bytes(crlf)
    dataset = ingest(config_for(tmp_path / "crlf.csv", tmp_path / "art"), Storage(str(tmp_path / "art")))
    assert dataset.variables == ["a", "OT"]


BAD_INPUTS = {
    "missing file": (None, "file not found"),
    "empty file": ("", "file is empty"),
    "no timestamp column": ("a,OT\n1,2\n3,4\n", r"no column holds dates \(columns: \['a', 'OT'\]\); set "
                            "data.timestamp"),
    "unparseable timestamp": (toy_text().replace("2020-01-01 05:00:00", "yesterday"),
                              "line 7: cannot parse timestamp 'yesterday'"),
    "duplicated timestamp": (toy_text().replace("2020-01-01 05:00:00", "2020-01-01 04:00:00"),
                             "duplicated timestamp 2020-01-01 04:00:00"),
    "out of order": (toy_text().replace("2020-01-01 05:00:00", "2020-01-01 03:30:00"),
                     "out of order at line 7"),
    "non-numeric value": (toy_text().replace(",10,21", ",ten,21"), "column 'a', line 12: 'ten' is not a number"),
    "infinite value": (toy_text().replace(",10,21", ",inf,21"), "column 'a', line 12: infinite value"),
    "too short": ("date,a,OT\n" + "\n".join(hourly(8)) + "\n",
                  r"split .train. \(rows \[0, 5\)\) is too short for lookback 4 \+ horizon 2"),
    "gap": ("date,a,OT\n" + "\n".join(hourly(40)[:10] + hourly(40)[12:]) + "\n", r"1 gap\(s\).*2 missing steps"),
    "missing value": (toy_text().replace(",10,21", ",,21"), "1 missing value.*column 'a', line 12"),
    "irregular step": (toy_text().replace("2020-01-01 05:00:00", "2020-01-01 05:30:00"), "irregular time index"),
    # values that pass the finiteness check but overflow the stored float32
    "1e308": (toy_text().replace(",10,21", ",1e308,21"), "column 'a', line 12: 1e\\+308 does not fit float32"),
    "3.5e38": (toy_text().replace(",10,21", ",10,3.5e38"), "column 'OT', line 12: 3.5e\\+38 does not fit float32"),
    "repeated header": (toy_text().replace("date,a,OT", "date,a,a,OT").replace("\n2020", ",1\n2020"),
                        r"the header names column\(s\) \['a'\] more than once"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_one_line_error_and_leaves_nothing(tmp_path, case):
    text, message = BAD_INPUTS[case]
    path = tmp_path / "toy.csv" if text is None else write_csv(tmp_path, text)
    art = tmp_path / "art"
    with pytest.raises(DataError, match=message) as info:
        ingest(config_for(path, art), Storage(str(art)))
    assert str(path) in str(info.value)
    assert not art.exists() or not any(art.rglob("*.parquet"))
    result = runner.invoke(app, ["ingest", "smoke", "--set", f"data.path={path}", "--set", "data.name=toy",
                                 "--set", "data.lookback=4", "--set", "data.horizons=[2]",
                                 "--set", f"storage.root={art}"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # one message (Rich may wrap it)


@pytest.mark.parametrize(("policy", "expected"), [("ffill", [5.0, 5.0]), ("interpolate", [6.0, 7.0])])
def test_missing_policies_fill_gaps_and_values_and_report_counts(tmp_path, policy, expected):
    lines = hourly(40)
    lines = [*lines[:6], *lines[8:]]  # rows 6 and 7 missing: a ffill copies 5, interpolation 6 and 7
    path = write_csv(tmp_path, "date,a,OT\n" + "\n".join(lines).replace(",20,41", ",,41") + "\n")
    dataset = ingest(config_for(path, tmp_path / "art", f"data.missing={policy}"), Storage(str(tmp_path / "art")))
    report = dataset.missing
    assert (report.gaps, report.rows_inserted, report.values_filled) == (1, 2, 5)
    series = pl.read_parquet(tmp_path / "art" / dataset.series_path)
    assert series.height == 40
    assert series["a"][6:8].to_list() == expected
    assert series["a"].null_count() == 0


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["ingest", "smoke", "--set", f"data.path={tmp_path}/nope.csv", "--debug"])
    assert result.exit_code != 0 and isinstance(result.exception, DataError)


def test_parquet_output_is_complete_or_absent(tmp_path):
    path = write_csv(tmp_path, toy_text())
    dataset = ingest(config_for(path, tmp_path / "art"), Storage(str(tmp_path / "art")))
    folder = tmp_path / "art" / dataset.directory
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", SERIES]
    assert not list((folder.parent).glob("*.tmp-*"))


def test_blank_lines_at_the_end_are_not_rows(tmp_path):
    path = write_csv(tmp_path, toy_text() + "\n   \n,,\n\n")
    dataset = ingest(config_for(path, tmp_path / "art"), Storage(str(tmp_path / "art")))
    assert dataset.rows == 40


def test_a_parquet_column_of_lists_is_a_one_line_error(tmp_path):
    frame = pl.DataFrame({"date": pl.datetime_range(pl.datetime(2021, 1, 1), pl.datetime(2021, 1, 2, 15), "1h",
                                                    eager=True)})
    frame = frame.with_columns(a=pl.int_range(0, frame.height).map_elements(lambda i: [i, i], return_dtype=pl.List(
        pl.Int64)), OT=pl.int_range(0, frame.height) * 0.5)
    frame.write_parquet(tmp_path / "lists.parquet")
    with pytest.raises(DataError, match=r"column 'a' holds List\(Int64\) values, not numbers"):
        ingest(config_for(tmp_path / "lists.parquet", tmp_path / "art"), Storage(str(tmp_path / "art")))


@pytest.mark.parametrize(("override", "message"), [
    ("data.columns=[HUFL,HUFL]", r"data.columns names \['HUFL'\] more than once"),
    ("data.target=date", "the time column 'date' is also named as a variable"),
])
def test_config_mistakes_that_used_to_be_tracebacks(override, message):
    result = runner.invoke(app, ["ingest", "smoke", "--set", override])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert re.search(message, result.stderr.replace("\n", "")), result.stderr

