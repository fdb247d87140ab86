"""The registry: versions, LATEST, the gate, and names that cannot escape the registry."""

from __future__ import annotations

import io
import re

import pytest
import torch

from timedistill.conf import ConfigError, load_config
from timedistill.store.registry import RegistryError, check_name, latest, list_models, read_version, versions
from timedistill.store.storage import Storage
from timedistill.store.weights import state_bytes
from timedistill.tasks.errors import StepError
from timedistill.tasks.registry import gate, register
from timedistill.tasks.windows import window_starts


@pytest.fixture
def fresh(smoke_pipeline, request):
    """The smoke run's student and a model name of this test's own (an empty registry entry)."""
    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    return smoke_pipeline, smoke_pipeline.storage, name


def settings(name, *extra):
    return load_config("smoke", [f"registry.model_name={name}", *extra])


def registered_row(row, student_mse):
    return row.model_copy(update={"student": row.student.model_copy(update={"test_mse": student_mse})})


def test_versions_latest_and_idempotence(fresh):
    run, storage, name = fresh
    config = settings(name, "registry.gate=always")
    dataset = run.dataset
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
    register(config, storage, run.dataset, run.students, run.row, run_id="run-a")
    storage.write_json(f"registry/{name}/v2/config.json", {"half": "written"})  # no _SUCCESS
    assert versions(storage, name) == ["v1"]
    with pytest.raises(RegistryError, match="not registered"):
        read_version(storage, name, "v2")
    nxt = register(config, storage, run.dataset, run.students, run.row, run_id="run-b")
    assert nxt.version == "v3" and versions(storage, name) == ["v1", "v3"]


def test_gate_beats_baseline(fresh):
    run, storage, name = fresh
    config = settings(name, "registry.gate=beats-baseline")
    baseline = run.row.baseline.test_mse
    worse = register(config, storage, run.dataset, run.students, registered_row(run.row, baseline * 1.1),
                     run_id="r1")
    assert not worse.registered and worse.version is None and ">=" in worse.reason
    assert latest(storage, name) is None
    better = register(config, storage, run.dataset, run.students, registered_row(run.row, baseline * 0.9),
                      run_id="r2")
    assert better.registered and "<" in better.reason


def test_gate_beats_champion_scores_both_models_on_the_same_newest_windows(fresh):
    run, storage, name = fresh
    dataset, students = run.dataset, run.students
    assert register(settings(name, "registry.gate=always"), storage, dataset, students, run.row, run_id="r1").registered
    config = settings(name, "registry.gate=beats-champion")
    assert gate(config, storage, "t-nobody", dataset, students, run.row).admitted  # no champion yet

    same = register(config, storage, dataset, students, run.row, run_id="r2")  # the champion's own weights
    decision = same.decision
    assert not same.registered and decision.champion == "v1"
    assert decision.challenger_mse == pytest.approx(decision.champion_mse, rel=1e-9)
    assert f"{decision.challenger_mse:.4f}" in same.reason and f"{decision.champion_mse:.4f}" in same.reason
    expected = window_starts(dataset.splits["val"], 96, 24)
    assert decision.windows.count == len(expected) and decision.windows.start < decision.windows.end

    spoil(storage, f"registry/{name}/v1/student.pt")  # a champion that forecasts badly
    strict = register(settings(name, "registry.gate=beats-champion", "registry.margin=0.99"), storage, dataset,
                      students, run.row, run_id="r3")
    assert not strict.registered and strict.decision.challenger_mse < strict.decision.champion_mse
    better = register(settings(name, "registry.gate=beats-champion", "registry.margin=0.05"), storage, dataset,
                      students, run.row, run_id="r4")
    assert better.registered and better.version == "v2"
    assert better.decision.challenger_mse < 0.95 * better.decision.champion_mse


def spoil(storage, path: str) -> None:
    """Add noise to a registered student's weights: it still forecasts, badly."""
    state = torch.load(io.BytesIO(storage.read_bytes(path)), weights_only=True)
    generator = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.3 * torch.randn(v.shape, generator=generator) if "running" not in k and v.is_floating_point()
             else v for k, v in state.items()}  # BatchNorm's running statistics stay valid
    storage.write_bytes(path, state_bytes(noisy))


def test_the_gate_that_compared_different_windows_is_gone():
    with pytest.raises(ConfigError, match="beats-champion"):
        load_config("smoke", ["registry.gate=beats-previous"])


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", "", ".hidden", "A-96", "x" * 70, "a b"])
def test_names_that_are_not_plain_are_rejected(name, tmp_path):
    with pytest.raises(RegistryError):
        check_name(name)
    with pytest.raises(RegistryError):
        read_version(Storage(str(tmp_path)), name)


def test_a_version_that_does_not_load_back_is_never_published(fresh):
    run, storage, name = fresh
    config = settings(name, "registry.gate=always")
    assert register(config, storage, run.dataset, run.students, run.row, run_id="good").version == "v1"
    storage.write_bytes(f"t-scratch/{name}/student.pt", b"not a state dict")
    broken = run.students.model_copy(update={"directory": f"t-scratch/{name}"})
    with pytest.raises(StepError, match=f"registration of {name} v2 refused: it does not load back"):
        register(config, storage, run.dataset, broken, run.row, run_id="broken")
    assert latest(storage, name) == "v1" and versions(storage, name) == ["v1"]
    assert not storage.exists(f"registry/{name}/v2")
