"""A series that grows: rolling splits follow the newest rows, and ingestion records what changed
since the version ingested before (appended rows, or a changed history)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.test_ingest import config_for, hourly, write_csv
from timedistill.flows.cli import app
from timedistill.store.storage import Storage
from timedistill.tasks.errors import DataError
from timedistill.tasks.ingest import ingest

ROLLING = ["data.split=rolling", "data.val_size=8", "data.test_size=8"]


def toy(rows: int, change: dict[int, str] | None = None) -> str:
    lines = hourly(rows)
    for index, value in (change or {}).items():
        stamp, a, _ = lines[index].split(",")
        lines[index] = f"{stamp},{a},{value}"
    return "date,a,OT\n" + "\n".join(lines) + "\n"


def test_rolling_splits_are_the_newest_steps(tmp_path):
    path = write_csv(tmp_path, toy(60))
    root = tmp_path / "art"
    dataset = ingest(config_for(path, root, *ROLLING), Storage(str(root)))
    assert dataset.splits == {"train": (0, 44), "val": (44, 52), "test": (52, 60)}
    durations = config_for(path, root, "data.split=rolling", "data.val_size=8h", "data.test_size=6h",
                           "data.train_size=1d")
    assert ingest(durations, Storage(str(root))).splits == {"train": (22, 46), "val": (46, 54), "test": (54, 60)}


@pytest.mark.parametrize(("extra", "message"), [
    (["data.val_size=30", "data.test_size=30"], r"val_size \+ data.test_size \(30 \+ 30 steps\) leave no rows"),
    (["data.val_size=28", "data.test_size=28"], r"split 'train' .* too short .* data.val_size or data.test_size"),
    (["data.val_size=90min", "data.test_size=8"], r"data.val_size '90min' is not a whole number of steps of 1h"),
])
def test_rolling_sizes_that_do_not_fit_are_one_line_errors(tmp_path, extra, message):
    path = write_csv(tmp_path, toy(60))
    with pytest.raises(DataError, match=message):
        ingest(config_for(path, tmp_path / "art", "data.split=rolling", *extra), Storage(str(tmp_path / "art")))
    assert not (tmp_path / "art" / "datasets" / "toy").exists() or not any(
        (tmp_path / "art" / "datasets" / "toy").glob("*/manifest.json"))


def test_appended_rows_move_the_splits_and_are_recorded(tmp_path):
    path, root = write_csv(tmp_path, toy(60)), tmp_path / "art"
    first = ingest(config_for(path, root, *ROLLING), Storage(str(root)))
    assert first.previous is None and first.appended_rows is None
    path.write_text(toy(72))
    grown = ingest(config_for(path, root, *ROLLING), Storage(str(root)))
    assert (grown.previous, grown.appended_rows, grown.history_changed) == (first.fingerprint, 12, False)
    assert grown.splits["test"] == (64, 72)  # the evaluation moved onto the new rows
    result = CliRunner().invoke(app, ["ingest", str(_config_file(tmp_path, path, root)), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["appended_rows"], summary["history_changed"]) == (12, False)


def test_a_changed_history_is_recorded_or_refused(tmp_path):
    path, root = write_csv(tmp_path, toy(60)), tmp_path / "art"
    ingest(config_for(path, root, *ROLLING), Storage(str(root)))
    path.write_text(toy(66, change={30: "999"}))
    changed = ingest(config_for(path, root, *ROLLING), Storage(str(root)))
    assert changed.history_changed and changed.first_changed == "2020-01-02 06:00:00"
    assert changed.appended_rows == 6

    path.write_text(toy(70, change={30: "999", 40: "-1"}))
    strict = config_for(path, root, *ROLLING, "data.history=append-only")
    before = sorted(p.name for p in (root / "datasets" / "toy").iterdir())
    with pytest.raises(DataError, match=r"at 2020-01-02 16:00:00, column 'OT' is -1.0 where the previous version "
                                        r"has 81.0 .*append-only"):
        ingest(strict, Storage(str(root)))
    path.write_text(toy(50, change={30: "999"}))
    with pytest.raises(DataError, match=r"no row at 2020-01-03 02:00:00, which the previous version has"):
        ingest(strict, Storage(str(root)))
    assert sorted(p.name for p in (root / "datasets" / "toy").iterdir()) == before  # nothing written


def _config_file(tmp_path, path, root):
    config = tmp_path / "toy.yaml"
    config.write_text(json.dumps({"data": {"name": "toy", "path": str(path), "lookback": 4, "horizons": [2],
                                           "split": "rolling", "val_size": 8, "test_size": 8},
                                  "storage": {"root": str(root)}}))
    return config


def test_refresh_always_makes_every_run_a_new_one(tmp_path):
    """teacher.refresh: always salts the teacher key and the run id with when the run started."""
    from timedistill.tasks.steps import RunContext, ingest_step
    from timedistill.tasks.teacher import teacher_key

    path, root = write_csv(tmp_path, toy(60)), tmp_path / "art"
    config = config_for(path, root, *ROLLING, "teacher.refresh=always")
    first, second = RunContext(config), RunContext(config)
    dataset = ingest_step(first)
    assert ingest_step(second).fingerprint == dataset.fingerprint
    assert first.salt and second.salt and first.salt != second.salt
    assert first.run_id(dataset) != second.run_id(dataset)
    assert teacher_key(config, dataset, 2, first.salt) != teacher_key(config, dataset, 2, second.salt)
    usual = RunContext(config_for(path, root, *ROLLING))
    assert usual.salt is None and usual.run_id(ingest_step(usual)) == config_for(path, root, *ROLLING).run_id(
        dataset.fingerprint)

