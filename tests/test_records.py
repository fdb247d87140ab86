"""The typed records and the files of earlier releases (tests/fixtures/legacy: a smoke run from
before the records existed, format 1): its registry still serves, its other records are refused
naming their format, and what this version writes keeps every field of theirs but those format 2
changed (in_format_2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import ROOT
from timedistill.store.record import StaleRecord, read_record
from timedistill.store.records import Cache, Dataset, RegistryEntry, StudentsRun, Teacher
from timedistill.store.registry import list_models, read_version
from timedistill.store.storage import Storage
from timedistill.store.weights import load_registered

LEGACY = ROOT / "tests" / "fixtures" / "legacy"


def shape(value: Any) -> Any:
    """The keys of a JSON value, recursively (lists by their first item): its fields, not its numbers."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__ if value is not None else None


def same_fields(written: Any, legacy: Any) -> None:
    """Every field of the legacy JSON is still written, with a value of the same JSON type
    (an int may have become a float and the other way round: both are numbers)."""
    number = {"int", "float"}

    def compare(new: Any, old: Any, where: str) -> None:
        if isinstance(old, dict):
            assert isinstance(new, dict), where
            assert set(old) <= set(new), f"{where}: missing {sorted(set(old) - set(new))}"
            for key in old:
                compare(new[key], old[key], f"{where}.{key}")
        elif isinstance(old, list) and old:
            assert isinstance(new, list) and new, where
            compare(new[0], old[0], f"{where}[0]")
        elif old is not None and new is not None:
            assert old == new or {old, new} <= number, f"{where}: {new} instead of {old}"

    compare(shape(written), shape(legacy), "$")


def legacy_json(pattern: str) -> tuple[Path, dict[str, Any]]:
    (path,) = (LEGACY / "root").glob(pattern)
    return path, json.loads(path.read_text())


EPOCH = {"epoch", "train_loss", "val_mse", "val_mae", "seconds", "lr", "improved"}


def in_format_2(value: Any) -> Any:
    """A legacy JSON value as format 2 writes it: a trained model's epochs keep their loss terms
    under `parts`, and it has no `latency_ms` of its own (the evaluate step times every model)."""
    if isinstance(value, list):
        return [in_format_2(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "best_epoch" in value:  # a trained model
        value = {key: item for key, item in value.items() if key != "latency_ms"}
    if set(value) >= EPOCH:  # an epoch
        value = {**{key: value[key] for key in EPOCH}, "improved": bool(value["improved"]),  # a flag, not a number
                 "parts": {k: v for k, v in value.items() if k not in EPOCH}}
    return {key: in_format_2(item) for key, item in value.items()}


@pytest.mark.parametrize(("pattern", "record"), [
    ("datasets/*/*/manifest.json", Dataset),
    ("teachers/*/*/teacher.json", Teacher),
    ("cache/*/cache.json", Cache),
    ("runs/*/*/h24/students.json", StudentsRun),
])
def test_records_of_an_earlier_format_are_refused_naming_it(pattern, record):
    path, _ = legacy_json(pattern)
    storage = Storage(str(LEGACY / "root"))
    with pytest.raises(StaleRecord, match=r"was written in format 1; this version reads format 2"):
        read_record(storage, str(path.relative_to(LEGACY / "root")), record)


def test_the_legacy_registry_still_serves():
    storage = Storage(str(LEGACY / "root"))
    assert list_models(storage) == ["smoke-24"]
    entry = read_version(storage, "smoke-24")
    assert isinstance(entry, RegistryEntry) and entry.version == "v1" and entry.model_id == "smoke-24@v1"
    for name, part in (("config", entry.config), ("scaler", entry.scaler), ("metrics", entry.metrics)):
        legacy, written = storage.read_json(f"registry/smoke-24/v1/{name}.json"), part.to_json()
        assert {key: written[key] for key in legacy} == legacy, name  # every field, the same values
    model = load_registered(storage, entry)  # weights_only=True inside
    prediction = model(torch.zeros(2, entry.config.lookback, len(entry.config.variables))).prediction
    assert prediction.shape == (2, entry.config.horizon, len(entry.scaler.variables))


def test_same_fields_catches_a_missing_field():
    """The check that the suite's outputs keep their fields can fail."""
    _, data = legacy_json("teachers/*/*/teacher.json")
    with pytest.raises(AssertionError, match="missing"):
        same_fields({k: v for k, v in data.items() if k != "sha256"}, data)
    with pytest.raises(AssertionError, match="instead of"):
        same_fields(data | {"params": "many"}, data)


def test_the_files_of_a_run_keep_every_field(smoke_pipeline):
    """What the current code writes has every field the legacy files have."""
    storage, run = smoke_pipeline.storage, smoke_pipeline
    written = {
        "datasets/*/*/manifest.json": f"{run.dataset.directory}/manifest.json",
        "teachers/*/*/teacher.json": f"{run.teacher.directory}/teacher.json",
        "cache/*/cache.json": f"{run.cache.directory}/cache.json",
        "runs/*/*/h24/students.json": f"{run.students.directory}/students.json",
        "runs/*/*/metrics.json": f"{run.run_dir}/metrics.json",
        "registry/smoke-24/v1/config.json": "registry/smoke-24/v1/config.json",
        "registry/smoke-24/v1/scaler.json": "registry/smoke-24/v1/scaler.json",
        "registry/smoke-24/v1/metrics.json": "registry/smoke-24/v1/metrics.json",
    }
    for pattern, path in written.items():
        data = storage.read_json(path)
        assert data.pop("record_format") == 2, path
        same_fields(data, in_format_2(legacy_json(pattern)[1]))


def test_the_commands_json_keeps_every_field(smoke_pipeline, session_root, smoke_csv):
    from typer.testing import CliRunner

    from timedistill.flows.cli import app

    legacy_retrain = in_format_2(json.loads((LEGACY / "cli" / "retrain.json").read_text()))
    same_fields(smoke_pipeline.summary.to_json(), legacy_retrain)
    runner = CliRunner()
    for command in ("ingest", "teacher", "distill"):
        result = runner.invoke(app, [command, "smoke", "--set", f"storage.root={session_root}",
                                     "--set", f"data.path={smoke_csv}", "--json"])
        assert result.exit_code == 0, result.output
        legacy = in_format_2(json.loads((LEGACY / "cli" / f"{command}.json").read_text()))
        same_fields(json.loads(result.stdout.strip().splitlines()[-1]), legacy)


def test_an_upgrade_reads_the_older_root_and_keys_its_own_artifacts_anew(tmp_path):
    """Keys changed once, when the data section learned to read a file's columns off it (a target
    of none, a time column found): the older root's dataset is a previous version the new one is
    compared with, and nothing of it is taken for the new one."""
    import shutil

    import polars as pl

    from timedistill.conf import load_config
    from timedistill.tasks.ingest import ingest

    shutil.copytree(LEGACY / "root", tmp_path, dirs_exist_ok=True)
    (legacy_dataset,) = (LEGACY / "root" / "datasets" / "smoke").iterdir()
    (tmp_path / "datasets" / "smoke" / "LATEST").write_text(f"{legacy_dataset.name}\n")
    series = pl.read_csv(ROOT / "data" / "ETTh1.csv", try_parse_dates=True).head(800)  # as that version stored it
    series.with_columns(pl.exclude("date").cast(pl.Float32)).write_parquet(
        tmp_path / "datasets" / "smoke" / legacy_dataset.name / "series.parquet")
    config = load_config("smoke", [f"storage.root={tmp_path}"])
    dataset = ingest(config, Storage(str(tmp_path)))
    assert dataset.fingerprint != legacy_dataset.name and not dataset.cached
    assert (dataset.previous, dataset.appended_rows, dataset.history_changed) == (legacy_dataset.name, 0, False)
