"""The registry: versions, LATEST, the gate, names that cannot escape the registry, registrations
at once (on a local disk and on moto's S3 server), and rollbacks that check what they roll back to."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from timedistill.conf import ConfigError, load_config
from timedistill.store.registry import RegistryError, check_name, latest, list_models, read_version, versions
from timedistill.store.storage import Storage
from timedistill.store.weights import load_registered, load_trained, state_bytes
from timedistill.tasks.errors import StepError
from timedistill.tasks.registry import claim_version, gate, register
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
    model = load_registered(storage, entry)
    reference = load_trained(storage, run.students, "student")
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


# ---- registrations at once ---------------------------------------------------------------------

BUCKET = "timedistill-registry"


@pytest.fixture(scope="module")
def s3_root(tmp_path_factory):
    """moto's S3-compatible server (as tests/test_cluster.py starts it), with a bucket; yields the
    root and endpoint of a Storage in it, credentials set for this process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                               "AWS_DEFAULT_REGION": "us-east-1"}.items():
                patch.setenv(key, value)
            deadline = time.monotonic() + 30
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                assert time.monotonic() < deadline and server.poll() is None, "moto's server did not start"
                time.sleep(0.2)
            endpoint = f"http://127.0.0.1:{port}"
            Storage(f"s3://{BUCKET}", endpoint).fs.create_dir(BUCKET)
            yield f"s3://{BUCKET}", endpoint
    finally:
        server.terminate()
        server.wait(30)
        log.close()


@pytest.fixture(params=["local", "s3"])
def shared_root(request, tmp_path):
    """A storage root that several registrations share: a local folder, or a prefix on moto's S3."""
    if request.param == "local":
        return Storage(str(tmp_path / "root"))
    root, endpoint = request.getfixturevalue("s3_root")
    return Storage(f"{root}/{request.node.name.replace('[', '-').rstrip(']')}", endpoint)


def at_once(count: int, work) -> list:
    """`work(i)` for i in range(count), in threads that all start together."""
    start = threading.Barrier(count)

    def run(index: int):
        start.wait()
        return work(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_claims_made_at_once_are_distinct(shared_root):
    won = at_once(12, lambda _: claim_version(shared_root, "claimed-4"))
    assert len(set(won)) == 12, won
    claims = shared_root.listdir("registry/claimed-4/claims")
    assert sorted(name.split(".")[0] for name in claims) == sorted(won)  # the losers' claims are gone


def test_registrations_at_once_get_distinct_complete_versions_and_latest_is_the_newest(smoke_pipeline, shared_root):
    """Six flows register the same model at once: six distinct versions, each complete and
    holding its own flow's files; LATEST names the newest. A folder that another writer left
    without a claim is neither reused nor touched."""
    run, model = smoke_pipeline, "smoke-24"
    source = run.storage
    weights = run.students.weights_path("student")
    shared_root.write_bytes(weights, source.read_bytes(weights))
    shared_root.write_json(f"registry/{model}/v2/config.json", {"half": "written"})  # an older writer's, no _SUCCESS
    config = load_config("smoke", ["registry.gate=always"])
    outcomes = at_once(6, lambda i: register(config, shared_root, run.dataset, run.students, run.row,
                                              run_id=f"flow-{i}"))
    registered = {outcome.version: f"flow-{i}" for i, outcome in enumerate(outcomes) if outcome.registered}
    assert len(registered) == 6 and "v2" not in registered, outcomes
    complete = versions(shared_root, model)
    assert sorted(complete) == sorted(registered)
    for version, run_id in registered.items():
        entry = read_version(shared_root, model, version)
        assert entry.version == version and entry.config.run_id == run_id
    assert latest(shared_root, model) == complete[-1]
    assert shared_root.read_json(f"registry/{model}/v2/config.json") == {"half": "written"}


def test_a_registration_repairs_a_latest_that_names_no_version(fresh):
    run, storage, name = fresh
    config = settings(name, "registry.gate=beats-champion")
    storage.write_bytes(f"registry/{name}/LATEST", b"\xff\xfe")
    registered = register(config, storage, run.dataset, run.students, run.row, run_id="repair")
    assert registered.registered and "no champion to beat" in registered.reason and "UTF-8" in registered.reason
    assert latest(storage, name) == registered.version == "v1"


# ---- rollbacks -----------------------------------------------------------------------------------

def test_a_rollback_to_a_version_that_does_not_verify_is_refused_unless_forced(tmp_path):
    from typer.testing import CliRunner

    from bench.bench_serving import register_random
    from timedistill.flows.cli import app
    from timedistill.store.records import ModelSpec

    storage = Storage(str(tmp_path))
    register_random(storage, "roll-4", ModelSpec(name="mlp", lookback=8, horizon=4, n_vars=2))
    for name in storage.listdir("registry/roll-4/v1"):
        storage.write_bytes(f"registry/roll-4/v2/{name}", storage.read_bytes(f"registry/roll-4/v1/{name}"))
    storage.write_bytes("registry/roll-4/LATEST", b"v2\n")
    weights = storage.read_bytes("registry/roll-4/v1/student.pt")
    storage.write_bytes("registry/roll-4/v1/student.pt", weights[: len(weights) // 2])
    runner = CliRunner()

    def rollback(*extra: str):
        return runner.invoke(app, ["models", "rollback", "roll-4", "--to", "v1", "--storage", str(tmp_path), *extra])

    refused = rollback()
    assert refused.exit_code == 1, refused.output
    assert "v1" in refused.output and "does not load" in refused.output and "--force" in refused.output
    assert "Traceback" not in refused.output and latest(storage, "roll-4") == "v2"
    forced = rollback("--force")
    assert forced.exit_code == 0 and "warning" in forced.output and latest(storage, "roll-4") == "v1", forced.output
    storage.write_bytes("registry/roll-4/v1/student.pt", weights)
    storage.write_bytes("registry/roll-4/LATEST", b"v2\n")
    repaired = rollback()
    assert repaired.exit_code == 0 and "LATEST is v1 (was v2)" in repaired.output, repaired.output
    assert "warning" not in repaired.output and latest(storage, "roll-4") == "v1"
    storage.delete("registry/roll-4/LATEST")
    storage.write_bytes("registry/roll-4/LATEST/v2", b"v2\n")  # a folder where LATEST belongs
    folder = rollback()
    assert folder.exit_code == 1 and "is a folder" in folder.output and "Traceback" not in folder.output
