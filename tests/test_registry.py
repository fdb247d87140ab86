"""The registry: versions, LATEST, the gate, and names that cannot escape the registry."""

from __future__ import annotations

import re

import pytest
import torch

from conf import load_config
from store.registry import RegistryError, check_name, latest, list_models, read_version, versions
from store.storage import Storage
from tasks.registry import gate, register


@pytest.fixture
def fresh(smoke_pipeline, request):
    """The smoke run's student and a model name of this test's own (an empty registry entry)."""
    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    return smoke_pipeline, smoke_pipeline.pipe.storage, name


def settings(name, *extra):
    return load_config("smoke", [f"registry.model_name={name}", *extra])


def registered_row(row, student_mse):
    return row.model_copy(update={"student": row.student.model_copy(update={"test_mse": student_mse})})


def test_versions_latest_and_idempotence(fresh):
    run, storage, name = fresh
    config = settings(name, "registry.gate=always")
    dataset = run.pipe.dataset
    first = register(config, storage, dataset, run.students, run.row, run_id="run-a")
    assert first.registered and first.version == "v1" and latest(storage, name) == "v1"
    again = register(config, storage, dataset, run.students, run.row, run_id="run-a")
    assert not again.registered and again.version == "v1" and "already registered" in again.reason
    second = register(config, storage, dataset, run.students, run.row, run_id="run-b")
    assert second.version == "v2" and latest(storage, name) == "v2"
    assert versions(storage, name) == ["v1", "v2"] and name in list_models(storage)
    entry = read_version(storage, name, "v1")
    assert entry.config.lookback == 96 and entry.config.horizon == 24
    assert entry.scaler.variables == dataset.variables
    assert entry.config.data_fingerprint == dataset.fingerprint
    assert entry.metrics == run.row
    model = entry.load(storage)
    reference = run.students.load(storage, "student")
    x = torch.randn(2, 96, 7)
    assert torch.equal(model(x).prediction, reference(x).prediction)


def test_incomplete_versions_are_invisible(fresh):
    run, storage, name = fresh
    config = settings(name, "registry.gate=always")
    register(config, storage, run.pipe.dataset, run.students, run.row, run_id="run-a")
    storage.write_json(f"registry/{name}/v2/config.json", {"half": "written"})  # no _SUCCESS
    assert versions(storage, name) == ["v1"]
    with pytest.raises(RegistryError, match="not registered"):
        read_version(storage, name, "v2")
    nxt = register(config, storage, run.pipe.dataset, run.students, run.row, run_id="run-b")
    assert nxt.version == "v3" and versions(storage, name) == ["v1", "v3"]


def test_gate_beats_baseline(fresh):
    run, storage, name = fresh
    config = settings(name, "registry.gate=beats-baseline")
    baseline = run.row.baseline.test_mse
    worse = register(config, storage, run.pipe.dataset, run.students, registered_row(run.row, baseline * 1.1),
                     run_id="r1")
    assert not worse.registered and worse.version is None and ">=" in worse.reason
    assert latest(storage, name) is None
    better = register(config, storage, run.pipe.dataset, run.students, registered_row(run.row, baseline * 0.9),
                      run_id="r2")
    assert better.registered and "<" in better.reason


def test_gate_beats_previous_with_margin(fresh):
    run, storage, name = fresh
    config = settings(name, "registry.gate=beats-previous", "registry.margin=0.05")
    dataset, students = run.pipe.dataset, run.students
    assert register(config, storage, dataset, students, registered_row(run.row, 1.0), run_id="r1").registered
    assert gate(config, storage, name, registered_row(run.row, 0.97))[0] is False  # < 5% better
    small = register(config, storage, dataset, students, registered_row(run.row, 0.97), run_id="r2")
    assert not small.registered
    big = register(config, storage, dataset, students, registered_row(run.row, 0.9), run_id="r3")
    assert big.registered and big.version == "v2"


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", "", ".hidden", "A-96", "x" * 70, "a b"])
def test_names_that_are_not_plain_are_rejected(name, tmp_path):
    with pytest.raises(RegistryError):
        check_name(name)
    with pytest.raises(RegistryError):
        read_version(Storage(str(tmp_path)), name)
