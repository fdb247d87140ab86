"""The daily loop on a synthetic series that grows: register v1; new rows from the same process
are no drift; rows with a changed level and season are drift, and the monitor's trigger retrains
(warm) and registers v2, which beats v1 on the same newest windows; a worse challenger is refused
with both scores in the reason. The series grows in a file that is rewritten, and in a database
table that gets new rows, pulled with data.watermark (only the new rows are read)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tests.postgres import Postgres
from timedistill.conf import load_config
from timedistill.flows.cli import app
from timedistill.flows.retrain import retrain
from timedistill.store.registry import latest
from timedistill.store.storage import Storage
from timedistill.tasks.ingest import ingest

START = np.datetime64("2024-01-01T00:00")
V1_ROWS, SAME_ROWS, CHANGED_ROWS = 600, 48, 600


def series(rows: int, first: int, level: float, amplitude: float, period: int) -> list[str]:
    t = np.arange(first, first + rows)
    noise = np.random.default_rng(first).normal(0, 0.05, (2, rows))
    ot = level + amplitude * np.sin(2 * np.pi * t / period) + noise[0]
    a = level / 2 + amplitude * np.cos(2 * np.pi * t / period) + noise[1]
    stamps = START + t.astype("timedelta64[h]")
    return [f"{str(s).replace('T', ' ')},{x:.4f},{y:.4f}" for s, x, y in zip(stamps, a, ot, strict=True)]


class Rows:
    """Where the series grows: `write(lines)` makes the source hold these rows (CSV lines of
    date,a,OT): a file written anew, or a table that gets the rows it lacks."""

    def __init__(self, folder: Path, postgres: Postgres | None) -> None:
        self.csv, self.postgres, self.written = folder / "daily.csv", postgres, 0
        if postgres is not None:
            postgres.execute('DROP TABLE IF EXISTS daily', 'CREATE TABLE daily (date timestamp, a float8, "OT" float8)')

    def data(self) -> dict[str, str]:
        if self.postgres is None:
            return {"path": str(self.csv)}
        # the password in the config file, the one place it may be: nothing copies it from there
        return {"path": self.postgres.uri(), "query": "daily", "watermark": "date"}

    def write(self, lines: list[str]) -> None:
        if self.postgres is None:
            self.csv.write_text("date,a,OT\n" + "\n".join(lines) + "\n")
            return
        new = [line.split(",") for line in lines[self.written:]]
        self.postgres.insert("daily", [(datetime.fromisoformat(date), float(a), float(ot)) for date, a, ot in new])
        self.written = len(lines)


@pytest.fixture(scope="module", params=["file", "database"])
def loop(request, ray_local, prefect_harness, tmp_path_factory):
    folder = tmp_path_factory.mktemp("daily")
    rows = Rows(folder, request.getfixturevalue("postgres") if request.param == "database" else None)
    config = folder / "daily.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "daily", **rows.data(), "split": "rolling", "val_size": 48, "test_size": "2d",
                 "train_size": "20d", "lookback": 48, "horizons": [12], "history": "append-only"},
        "teacher": {"name": "dlinear", "epochs": 3, "lr": 0.01, "batch_size": 32, "refresh": "warm",
                    "warm_epochs": 2},
        "student": {"name": "mlp", "params": {"d_model": 32}},
        "distill": {"epochs": 3, "batch_size": 32, "feature_max_dim": 64, "warm_start": True, "warm_epochs": 3},
        "registry": {"gate": "beats-champion"},
        "monitor": {"min_windows": 5},
        "storage": {"root": str(folder / "artifacts")},
    }))
    return {"rows": rows, "config": str(config), "storage": Storage(str(folder / "artifacts"))}


def monitor(config: str, *extra: str, drift: bool = False) -> list[dict]:
    """The monitor's reports; it exits 3 when a model drifted, 0 when none did (for cron and CI)."""
    result = CliRunner().invoke(app, ["monitor", config, "--json", *extra])
    assert result.exit_code == (3 if drift else 0), result.output
    return [json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith("{")]


def test_the_daily_loop(loop):
    rows, config, storage = loop["rows"], loop["config"], loop["storage"]
    regime_a = series(V1_ROWS + SAME_ROWS, 0, level=10, amplitude=3, period=24)

    # day 1: v1
    rows.write(regime_a[:V1_ROWS])
    first = retrain(config=config)
    (registration,) = first.models
    assert registration.registered and registration.version == "v1" and "no champion yet" in registration.reason
    assert first.teachers[0].warm_from is None  # nothing to start from yet

    # day 2: more rows of the same process: no drift, nothing retrained
    rows.write(regime_a)
    (report,) = monitor(config)
    assert report["model"] == "daily-12" and report["version"] == "v1"
    assert report["windows"] == SAME_ROWS - 12 + 1 and report["drift"] is False, report
    assert set(report) >= {"mse_recent", "mse_at_registration", "ratio"} and report["ratio"] < 1.3

    # day 3: the level and the season changed: drift, and the trigger retrains
    rows.write(regime_a + series(CHANGED_ROWS, V1_ROWS + SAME_ROWS, level=25, amplitude=9, period=12))
    (report,) = monitor(config, "--trigger", drift=True)
    assert report["drift"] is True and report["ratio"] > 1.3, report
    assert "daily-12: v2" in report["retrain"], report
    assert latest(storage, "daily-12") == "v2"
    if rows.postgres is not None:  # each version appended what was new to the one before, read from the overlap on
        dataset = ingest(load_config(config), storage)
        assert dataset.watermark is not None and dataset.watermark.pulled_rows < dataset.rows
        assert dataset.appended_rows == CHANGED_ROWS and "***" in dataset.source
    runs = [json.loads(path.read_text()) for path in Path(storage.path("runs/daily")).glob("*/metrics.json")]
    (summary,) = [run for run in runs if run["models"][0]["version"] == "v2"]  # what `retrain --json` printed
    decision = summary["models"][0]["decision"]
    assert decision["champion"] == "v1" and decision["challenger_mse"] < decision["champion_mse"]
    assert decision["windows"]["count"] == 48 - 12 + 1 and decision["windows"]["start"] < decision["windows"]["end"]
    (teacher,) = summary["teachers"]
    assert teacher["warm_from"] == first.teachers[0].directory and teacher["epochs"] == 2  # teacher.warm_epochs
    students = storage.read_json(f"runs/daily/{summary['run_id']}/h12/students.json")
    assert students["warm_from"] == first.students[0].directory  # the run behind v1

    if rows.postgres is not None:
        return  # the gate below reads the stored series alike, wherever it came from
    # a worse challenger on the same data: refused, with both numbers
    worse = retrain(config=config, overrides=["distill.warm_start=false", "distill.lr=1e-9", "distill.epochs=1"])
    (refused,) = worse.models
    assert not refused.registered and refused.decision.challenger_mse > refused.decision.champion_mse
    assert f"{refused.decision.challenger_mse:.4f}" in refused.reason
    assert f"{refused.decision.champion_mse:.4f}" in refused.reason
    assert latest(storage, "daily-12") == "v2"
