"""Databases and lakes as sources, on real parts: a PostgreSQL server of the tests' own (real SQL,
no mocks) and Parquet lakes on a local disk and on moto's S3 server. A pull reads the whole source
the first time and only the new rows (plus an overlap it checks) after that; whatever it refuses,
it refuses in one line that names the source with its password redacted, and stores nothing."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.postgres import PASSWORD, free_port
from timedistill.conf import ConfigError, load_config
from timedistill.store.records import SERIES
from timedistill.store.storage import Storage
from timedistill.tasks.errors import DataError
from timedistill.tasks.ingest import LATEST, MANIFEST, ingest

START = datetime(2024, 1, 1, tzinfo=UTC)


def hour(index: int) -> datetime:
    return START + timedelta(hours=index)


def wide_rows(first: int, last: int) -> list[tuple[object, ...]]:
    return [(hour(i), float(i % 24), float(i % 7) + 0.5) for i in range(first, last)]


def config(path: str, root: Path, *extra: str, query: str | None = None):
    return load_config(None, [f"data.path={path}", *([f"data.query={query}"] if query else []), "data.lookback=24",
                              "data.horizons=[12]", "data.watermark_overlap=6", f"storage.root={root}", *extra])


def versions(root: Path, name: str) -> list[str]:
    folder = root / "datasets" / name
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir()) if folder.exists() else []


@pytest.fixture
def password(monkeypatch):
    """libpq's environment gives the password, as docs/database-and-lake.md advises."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)


@pytest.fixture
def table(postgres, request) -> str:
    """A fresh wide table (ts timestamptz, a, ot) of 200 hourly rows, named after the test."""
    name = "t_" + request.node.name.split("[")[0].removeprefix("test_")[:40]
    postgres.execute(f"DROP TABLE IF EXISTS {name}", f"CREATE TABLE {name} (ts timestamptz, a float8, ot float8)")
    postgres.insert(name, wide_rows(0, 200))
    return name


def test_a_table_is_pulled_whole_then_only_what_is_new(postgres, table, password, tmp_path):
    settings = config(postgres.uri(None), tmp_path, "data.watermark=ts", query=table)
    storage = Storage(str(tmp_path))
    first = ingest(settings, storage)
    assert first.name == table and first.rows == 200 and first.variables == ["a", "ot"] and first.step == "1h"
    assert first.watermark is not None and first.watermark.after is None and first.watermark.pulled_rows == 200
    stored = pl.read_parquet(tmp_path / first.directory / SERIES)
    assert stored["ts"][0] == datetime(2024, 1, 1) and stored["a"].dtype == pl.Float32  # naive UTC, float32

    postgres.insert(table, wide_rows(200, 230))
    second = ingest(settings, storage)
    mark = second.watermark
    assert second.previous == first.fingerprint and second.appended_rows == 30 and second.rows == 230
    assert mark is not None and mark.after == "2024-01-09 07:00:00" and mark.overlap_rows == 6
    assert mark.pulled_rows == 6 + 30  # the condition ran in the database: the older rows never came
    assert mark.overlap_from == "2024-01-09 02:00:00"

    again = ingest(settings, storage)  # nothing new: the same version
    assert again.cached and again.fingerprint == second.fingerprint
    whole = ingest(config(postgres.uri(None), tmp_path / "whole", "data.timestamp=ts", query=table),
                   Storage(str(tmp_path / "whole")))
    assert whole.fingerprint == second.fingerprint  # what a pull stores does not depend on how it was pulled
    assert whole.source_sha256 == second.source_sha256 and whole.watermark is None


def test_a_select_of_a_long_table_reads_as_a_long_file(postgres, password, tmp_path):
    postgres.execute("DROP TABLE IF EXISTS readings",
                     "CREATE TABLE readings (unique_id text, ds timestamp, y numeric, site text)",
                     "INSERT INTO readings SELECT name, TIMESTAMP '2024-01-01' + i * INTERVAL '1 hour', i * k, 'x' "
                     "FROM generate_series(0, 79) AS i, (VALUES ('north', 1), ('south', 2)) AS ids (name, k)")
    dataset = ingest(config(postgres.uri(None), tmp_path, "data.name=sites", "data.lookback=4", "data.horizons=[2]",
                            query="SELECT * FROM readings WHERE site = 'x'"), Storage(str(tmp_path)))
    assert dataset.format == "long" and dataset.variables == ["north", "south"] and dataset.rows == 80
    series = pl.read_parquet(tmp_path / dataset.directory / SERIES)
    assert series["south"].to_list()[:3] == [0.0, 2.0, 4.0]  # numeric arrives as text and is read as numbers


@pytest.mark.parametrize(("change", "message"), [
    ("UPDATE {t} SET a = 99 WHERE ts = '2024-01-09 05:00+00'",
     r"at 2024-01-09 05:00:00, column 'a' is 99.0 where the stored series has 5.0"),
    ("DELETE FROM {t} WHERE ts = '2024-01-09 04:00+00'", r"no row at 2024-01-09 04:00:00, which the stored series has"),
    ("DELETE FROM {t} WHERE ts > '2024-01-09 00:00+00'", r"no row at 2024-01-09 02:00:00, which the stored"),
])
def test_a_source_that_lost_or_rewrote_pulled_rows_is_refused(postgres, table, password, tmp_path, change, message):
    settings = config(postgres.uri(None), tmp_path, "data.watermark=ts", query=table)
    storage = Storage(str(tmp_path))
    first = ingest(settings, storage)
    postgres.execute(change.format(t=table))
    postgres.insert(table, wide_rows(200, 210))
    with pytest.raises(DataError, match=message) as refused:
        ingest(settings, storage)
    assert str(refused.value).startswith(f"postgresql://forecaster@127.0.0.1:{postgres.port}/postgres (table {table})")
    assert "\n" not in str(refused.value) and "lost or rewritten" in str(refused.value)
    assert versions(tmp_path, table) == [first.fingerprint]  # nothing stored
    assert (tmp_path / "datasets" / table / LATEST).read_text().strip() == first.fingerprint


def test_a_password_is_never_shown_stored_or_taken_from_an_override(postgres, table, tmp_path):
    from timedistill.tasks.steps import RunContext, ingest_step

    config_file = tmp_path / "db.yaml"  # the one place a password may be written: the user's own file
    config_file.write_text(yaml.safe_dump({"data": {"path": postgres.uri(), "query": table, "watermark": "ts",
                                                    "lookback": 24, "horizons": [12]},
                                           "storage": {"root": str(tmp_path / "artifacts")}}))
    settings = load_config(config_file)
    with RunContext(settings) as run:
        dataset = ingest_step(run)
        folder = tmp_path / "artifacts" / run.run_dir(dataset)
    assert dataset.source == f"postgresql://forecaster:***@127.0.0.1:{postgres.port}/postgres"
    written = [path.read_text() for path in (tmp_path / "artifacts").rglob("*") if path.suffix in (".json", ".yaml")]
    assert written and not any(PASSWORD in text for text in written)
    assert yaml.safe_load((folder / "config.yaml").read_text())["data"]["path"] == dataset.source
    assert PASSWORD not in str(settings.public())

    with pytest.raises(ConfigError, match=r"--set data.path: postgresql://forecaster:\*\*\*@.* holds a password.*"
                                          "PGPASSWORD") as refused:
        load_config(None, [f"data.path={postgres.uri()}", f"data.query={table}"])
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize(("setting", "message"), [
    ({"path": "postgresql://forecaster@127.0.0.1:{closed}/postgres"}, r"cannot connect: .*Connection refused"),
    ({"path": "postgresql://forecaster:wrong-pw@127.0.0.1:{port}/postgres"},
     r"forecaster:\*\*\*@.*cannot connect: password authentication failed for user \"forecaster\""),
    ({"query": "no_such_table"}, r"\(table no_such_table\): relation \"no_such_table\" does not exist"),
    ({"columns": ["a", "OT"]}, r"no column 'OT' \(data.columns; did you mean 'ot'\?\)"),
    ({"query": "SELECT a, ot FROM {table}"}, r"\(query 'SELECT a, ot FROM t_\w+'\): no column holds dates"),
    ({"query": "SELECT ts::text AS ts, a, ot FROM {table}", "watermark": "ts", "second": True},
     r"column 'ts' holds string values; data.watermark needs a date or timestamp column"),
])
def test_bad_sources_are_one_line_naming_the_source_and_nothing_is_stored(postgres, table, password, tmp_path,
                                                                          setting, message):
    fields = {"path": postgres.uri(None), "query": table, **setting}
    path = fields["path"].format(closed=free_port(), port=postgres.port)
    extra = [f"data.columns={fields['columns']}"] if "columns" in fields else []
    extra += [f"data.watermark={fields['watermark']}"] if "watermark" in fields else []
    root = tmp_path / "artifacts"
    overrides = [f"data.path={path}", f"data.query={fields['query'].format(table=table)}", "data.lookback=24",
                 "data.horizons=[12]", f"storage.root={root}", "data.name=bad", *extra]
    if fields.get("second"):  # a text time column is a problem once a condition is put on it
        assert ingest(load_config(None, overrides), Storage(str(root))).rows == 200
    with pytest.raises(DataError, match=message) as refused:
        ingest(load_config(None, overrides) if "wrong-pw" not in path else load_config_file(tmp_path, overrides),
               Storage(str(root)))
    assert "\n" not in str(refused.value) and "wrong-pw" not in str(refused.value)
    assert str(refused.value).startswith("postgresql://forecaster")
    assert len(versions(root, "bad")) == (1 if fields.get("second") else 0)


def load_config_file(folder: Path, overrides: list[str]):
    """A password may only come from a file (an override refuses it): the config as a YAML file."""
    raw: dict[str, dict[str, object]] = {}
    for override in overrides:
        key, _, value = override.partition("=")
        section, field = key.split(".")
        raw.setdefault(section, {})[field] = yaml.safe_load(value)
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


# ---- lakes -----------------------------------------------------------------------------------


def day_frame(day: int) -> pl.DataFrame:
    start = datetime(2024, 1, 1) + timedelta(days=day)
    stamps = pl.datetime_range(start, start + timedelta(hours=23), "1h", eager=True)
    return pl.DataFrame({"ts": stamps, "a": [float(i) for i in range(24)], "ot": [float(day + i) for i in range(24)]})


def partition(day: int) -> str:
    return f"date={(datetime(2024, 1, 1) + timedelta(days=day)).date()}/part-0.parquet"


def write_local_day(lake: Path, day: int) -> None:
    path = lake / partition(day)
    path.parent.mkdir(parents=True, exist_ok=True)
    day_frame(day).write_parquet(path)


def test_a_local_lake_is_scanned_and_older_partitions_are_left_unopened(tmp_path):
    lake = tmp_path / "lake"
    for day in range(6):
        write_local_day(lake, day)
    storage = Storage(str(tmp_path / "artifacts"))
    settings = config(str(lake), tmp_path / "artifacts", "data.watermark=ts")
    first = ingest(settings, storage)
    assert first.name == "lake" and first.rows == 6 * 24 and first.variables == ["a", "ot"]  # `date` is no variable
    (lake / partition(1)).write_bytes(b"not parquet")  # opened by any read of that day
    write_local_day(lake, 6)
    second = ingest(settings, storage)
    assert second.appended_rows == 24 and second.watermark is not None and second.watermark.pulled_rows == 6 + 24
    with pytest.raises(DataError, match=r"lake: cannot read: .*parquet") as whole:  # a full read opens it
        ingest(config(str(lake), tmp_path / "whole"), Storage(str(tmp_path / "whole")))
    assert "\n" not in str(whole.value)
    globbed = ingest(config(f"{lake}/date=2024-01-0[3-7]/*.parquet", tmp_path / "glob", "data.name=glob"),
                     Storage(str(tmp_path / "glob")))
    assert globbed.rows == 5 * 24 and globbed.start == "2024-01-03 00:00:00"


def test_an_empty_lake_is_one_line(tmp_path):
    (tmp_path / "lake").mkdir()
    with pytest.raises(DataError, match=r"lake: no Parquet files found"):
        ingest(config(str(tmp_path / "lake"), tmp_path / "artifacts"), Storage(str(tmp_path / "artifacts")))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server in this process, on a free port of 127.0.0.1 (the cluster tests run it as a process)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._port}"  # ThreadedMotoServer keeps its port private (moto 5.2)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_a_lake_on_s3_is_pulled_incrementally(s3, tmp_path):
    bucket = Storage("s3://lake", s3)
    bucket.fs.create_dir("lake")
    for day in range(5):
        bucket.write_parquet(f"sales/{partition(day)}", day_frame(day).to_arrow())
    storage = Storage(str(tmp_path))
    settings = config("s3://lake/sales/", tmp_path, "data.watermark=ts", f"storage.endpoint_override={s3}")
    first = ingest(settings, storage)
    assert first.name == "sales" and first.rows == 5 * 24 and first.source == "s3://lake/sales/"
    bucket.write_bytes(f"sales/{partition(2)}", b"not parquet")
    bucket.write_parquet(f"sales/{partition(5)}", day_frame(5).to_arrow())
    second = ingest(settings, storage)
    assert second.previous == first.fingerprint and second.appended_rows == 24 and second.rows == 6 * 24
    manifest = (tmp_path / second.directory / MANIFEST).read_text()
    assert '"after": "2024-01-05 23:00:00"' in manifest


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.path=postgresql://forecaster@db/metrics"], r"is a database: data.query names its rows"),
    (["data.query=load"], r"data.query reads a database; data.path is not one"),
    (["data.path=postgresql://forecaster@db/metrics", "data.query=DELETE FROM load"],
     r"data.query must be a table name \(schema.table\) or a SELECT"),
    (["data.path=/lake/", "data.watermark=ts", "data.timestamp=date"], r"data.watermark 'ts' must be the time column"),
    (["data.path=/lake/", "data.watermark=ts", "data.max_rows=100"], r"data.max_rows keeps the oldest rows"),
])
def test_source_settings_that_do_not_go_together_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
