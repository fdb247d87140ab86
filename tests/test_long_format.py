"""Long input (one row per id, timestamp and value) through the public ingest path, on tiny files."""

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from timedistill.conf import load_config
from timedistill.flows.cli import app
from timedistill.store.storage import Storage
from timedistill.tasks.errors import DataError
from timedistill.tasks.ingest import ingest

HOURS = 60  # enough for a lookback 4 + horizon 2 window in each of the 0.7 / 0.1 / 0.2 splits
IDS = ("OT", "a", "b")
START = datetime(2020, 1, 1)
runner = CliRunner()


def stamp(hour: int, minute: int = 0) -> str:
    return f"{START + timedelta(hours=hour, minutes=minute):%Y-%m-%d %H:%M:%S}"


def value(ids: tuple[str, ...], name: str, hour: int) -> float:
    return (ids.index(name) + 1) * 100 + hour  # every id and hour has its own value


def records(ids: tuple[str, ...] = IDS, hours=range(HOURS), minute: int = 0) -> list[tuple[str, str, str]]:
    """(timestamp, id, value) rows, hour by hour; row i of the list is on line i + 2 of the file."""
    return [(stamp(hour, minute), name, str(value(ids, name, hour))) for hour in hours for name in ids]


def write_long(tmp_path: Path, rows: list[tuple[str, ...]], header: str = "date,id,value") -> Path:
    path = tmp_path / "long.csv"
    path.write_text(header + "\n" + "\n".join(",".join(row) for row in rows) + "\n")
    return path


def long_config(path: Path, root: Path, *extra: str):
    return load_config("smoke", [f"data.path={path}", f"storage.root={root}", "data.format=long",
                                 "data.target=OT", "data.lookback=4", "data.horizons=[2]", *extra])


def stored_series(path: Path, root: Path, *extra: str) -> tuple[list[str], pl.DataFrame]:
    """Ingest into a root of its own (no case reuses another's dataset) and read the stored series back."""
    dataset = ingest(long_config(path, root, *extra), Storage(str(root)))
    return dataset.variables, pl.read_parquet(root / dataset.series_path)


def test_long_file_stores_the_same_series_as_the_wide_file(tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text("date,a,b,OT\n" + "".join(
        f"{stamp(h)},{value(IDS, 'a', h)},{value(IDS, 'b', h)},{value(IDS, 'OT', h)}\n" for h in range(HOURS)))
    wide_set = ingest(long_config(wide, tmp_path / "wide", "data.format=wide"), Storage(str(tmp_path / "wide")))
    # rows in any order: grouped by id, newest first
    path = write_long(tmp_path, sorted(records(), key=lambda row: (row[1], row[0]), reverse=True))
    variables, series = stored_series(path, tmp_path / "long")
    assert variables == wide_set.variables == ["a", "b", "OT"]
    assert series.equals(pl.read_parquet(tmp_path / "wide" / wide_set.series_path))
    assert series.columns[0] == "date" and series.dtypes[0] == pl.Datetime("us")


def test_numeric_ids_name_variables_by_their_string_form(tmp_path):
    path = write_long(tmp_path, records(ids=("7", "10", "2")))
    variables, series = stored_series(path, tmp_path / "all", "data.target='7'")
    assert variables == ["10", "2", "7"]  # sorted as strings, the target last
    assert series["7"][:2].to_list() == [100.0, 101.0]
    picked, _ = stored_series(path, tmp_path / "picked", "data.target='7'", "data.columns=['2', '10']")
    assert picked == ["2", "10", "7"]


def test_long_parquet_with_native_types(tmp_path):
    hours = pl.datetime_range(START, START + timedelta(hours=HOURS - 1), "1h", eager=True, time_unit="ns")
    frame = pl.DataFrame({
        "when": pl.concat([hours, hours]),
        "series": pl.Series([1] * HOURS + [2] * HOURS, dtype=pl.Int32),
        "reading": pl.Series(list(range(HOURS)) * 2, dtype=pl.Int64),
    }).reverse()  # newest first: data.max_rows keeps the oldest rows of the pivoted series
    frame.write_parquet(tmp_path / "long.parquet")
    variables, series = stored_series(tmp_path / "long.parquet", tmp_path / "art", "data.timestamp=when",
                                      "data.id_column=series", "data.value_column=reading", "data.target='1'",
                                      "data.max_rows=50")
    assert variables == ["2", "1"]
    assert series.height == 50 and series["when"][-1] == START + timedelta(hours=49)
    assert series["1"].to_list() == list(range(50))



def test_a_null_parquet_timestamp_names_its_row(tmp_path):
    hours = [START + timedelta(hours=h) for h in range(HOURS)]
    frame = pl.DataFrame({"date": [*hours, None], "id": ["OT"] * HOURS + ["OT"], "value": [1.0] * (HOURS + 1)})
    frame.write_parquet(tmp_path / "long.parquet")
    with pytest.raises(DataError, match=f"row {HOURS}: no timestamp in column 'date'"):
        stored_series(tmp_path / "long.parquet", tmp_path / "art")

def late_b() -> list[tuple[str, str, str]]:
    """b starts 10 hours after OT and a: inner keeps a regular grid of 50 hours."""
    return [row for row in records() if row[1] != "b" or row[0] >= stamp(10)]


def test_inner_keeps_the_timestamps_every_id_has(tmp_path):
    _, series = stored_series(write_long(tmp_path, late_b()), tmp_path / "art")
    assert series.height == HOURS - 10 and series["date"][0] == START + timedelta(hours=10)
    assert series["a"][0] == value(IDS, "a", 10)


@pytest.mark.parametrize(("missing", "filled"), [("ffill", True), ("error", False)])
def test_outer_keeps_every_timestamp_and_the_missing_policy_fills_the_holes(tmp_path, missing, filled):
    holes = {stamp(30), stamp(31)}
    path = write_long(tmp_path, [row for row in late_b() if row[1] != "b" or row[0] not in holes])
    if not filled:
        with pytest.raises(DataError, match=r"12 missing value\(s\); the first in column 'b'"):
            stored_series(path, tmp_path / "art", "data.align=outer", f"data.missing={missing}")
        return
    _, series = stored_series(path, tmp_path / "art", "data.align=outer", f"data.missing={missing}")
    b = series["b"].to_list()
    assert series.height == HOURS
    assert b[:11] == [value(IDS, "b", 10)] * 11  # before b's first value: its first value
    assert b[29:32] == [value(IDS, "b", 29)] * 3  # holes: the value before them


def replace(rows: list[tuple[str, str, str]], index: int, row: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    return [*rows[:index], row, *rows[index + 1:]]


BASE = records()
HOUR5_A = 3 * 5 + 1  # row of (hour 5, 'a'): line 18
BAD_LONG = {
    "no id column": ((BASE, "date,name,value"), (), r"no column 'id' \(data.id_column\) \(columns: \['date', 'name', "
                     r"'value'\]\)"),
    "no value column": ((BASE, "date,id,reading"), (),
                        r"no column 'value' \(data.value_column\) \(columns: .*'reading'\]\)"),
    "unparseable timestamp": ((replace(BASE, HOUR5_A, ("yesterday", "a", "1")),), (),
                              "line 18: cannot parse timestamp 'yesterday' in column 'date'"),
    "non-numeric value": ((replace(BASE, HOUR5_A, (stamp(5), "a", "ten")),), (),
                          "column 'value', line 18: 'ten' is not a number"),
    "infinite value": ((replace(BASE, HOUR5_A, (stamp(5), "a", "inf")),), (),
                       "column 'value', line 18: infinite value"),
    "empty id": ((replace(BASE, HOUR5_A, (stamp(5), " ", "1")),), (), "line 18: empty id in column 'id'"),
    "id named like the timestamp": ((replace(BASE, HOUR5_A, (stamp(5), "date", "1")),), (),
                                    "line 18: id 'date' in column 'id' has the name of the timestamp column"),
    "duplicated pair": (([*BASE, (stamp(5), "a", "999")],), (),
                        r"duplicated \(id, timestamp\) pair \('a', 2020-01-01 05:00:00\) at line 182 "
                        r"\(first at line 18\)"),
    "too many ids": ((BASE,), ("data.max_series=2",), r"3 ids to keep in column 'id', more than data.max_series \(2\)"),
    "unknown target": ((BASE,), ("data.target=nope",), r"no id 'nope' in column 'id' \(ids: OT, a, b\)"),
    "unknown column": ((BASE,), ("data.columns=[b, zz]",), "no id 'zz' in column 'id'"),
    "no shared timestamps": (([row for row in BASE if (row[1] == "OT") == (row[0] >= stamp(30))],), (),
                             "ids share no timestamps"),
    "shifted grid": (([*records(("OT", "a")), *records(("b",), minute=25)],), ("data.align=outer",),
                     r"irregular time index .* is not a whole number of steps \(25min\)"),
}


@pytest.mark.parametrize("case", list(BAD_LONG))
def test_bad_long_input_is_a_clear_error_and_leaves_nothing(tmp_path, case):
    file, extra, message = BAD_LONG[case]
    path = write_long(tmp_path, *file)
    root = tmp_path / "art"
    with pytest.raises(DataError, match=message) as info:
        ingest(long_config(path, root, *extra), Storage(str(root)))
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert not root.exists() or not any(root.rglob("*"))


@pytest.mark.parametrize("case", ["duplicated pair", "shifted grid"])  # in pivot_long, and after it
def test_cli_prints_one_line_for_a_bad_long_file(tmp_path, case):
    file, extra, _ = BAD_LONG[case]
    path = write_long(tmp_path, *file)
    settings = [f"data.path={path}", f"storage.root={tmp_path / 'art'}", "data.format=long", "data.target=OT",
                "data.lookback=4", "data.horizons=[2]", *extra]
    result = runner.invoke(app, ["ingest", "smoke", *[arg for setting in settings for arg in ("--set", setting)]])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # one message (Rich may wrap it)
