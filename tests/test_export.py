"""Students out of the project: `timedistill export` files run in onnxruntime and torch.jit.load
and match the registered model; `timedistill models list | show | rollback`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from timedistill.flows.cli import app
from timedistill.store.forecaster import ForecastModel
from timedistill.store.registry import latest

runner = CliRunner()


def cli(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def registry(smoke_pipeline, session_root):
    return smoke_pipeline.storage, str(session_root)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")  # what libtorch users call
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_student_matches_the_registered_one(registry, tmp_path, fmt):
    storage, root = registry
    card = cli("export", "smoke-24", "--version", "v1", "--format", fmt, "--output", str(tmp_path), "--storage", root)
    assert (card["lookback"], card["horizon"], card["step"], card["version"]) == (96, 24, "1h", "v1")
    assert card["variables"][-1] == "OT" and {"student", "teacher"} <= set(card["metrics"])
    assert json.loads((tmp_path / f"smoke-24-v1.{fmt}.json").read_text()) == {k: card[k] for k in card
                                                                             if k not in ("path", "card")}
    histories = np.random.default_rng(0).normal(10, 5, (5, 96, 7)).astype(np.float32)  # data units
    expected = ForecastModel.from_registry(storage, "smoke-24", "v1").forecast(histories.astype(np.float64))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(card["path"])
        got = session.run(None, {card["input"]: histories})[0]
    else:
        got = torch.jit.load(card["path"])(torch.from_numpy(histories)).detach().numpy()
    assert got.shape == (5, 24, 7)
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_both_formats_in_one_folder_keep_a_card_each_and_the_default_folder_is_exports(registry, tmp_path,
                                                                                       monkeypatch):
    _, root = registry
    monkeypatch.chdir(tmp_path)
    cards = [cli("export", "smoke-24", "--version", "v1", "--format", fmt, "--storage", root)
             for fmt in ("onnx", "torchscript")]
    written = sorted(path.name for path in (tmp_path / "exports").iterdir())
    assert written == ["smoke-24-v1.onnx", "smoke-24-v1.onnx.json", "smoke-24-v1.torchscript.json",
                       "smoke-24-v1.torchscript.pt"]
    for card in cards:
        assert json.loads(Path(card["card"]).read_text())["file"] == Path(card["path"]).name


def test_models_list_show_and_rollback(registry, tmp_path):
    storage, root = registry
    listed = {m["name"]: m for m in cli("models", "list", "--storage", root)["models"]}
    assert listed["smoke-24"]["version"] == latest(storage, "smoke-24")
    shown = cli("models", "show", "smoke-24", "--version", "v1", "--storage", root)
    assert shown["version"] == "v1" and shown["lookback"] == 96 and "v1" in shown["versions"]
    # a rollback is a LATEST that a running server reads like any other (tests/test_serving.py)
    copy = tmp_path / "copy"
    for name in storage.listdir("registry/smoke-24/v1"):
        (copy / "registry" / "smoke-24" / "v1").mkdir(parents=True, exist_ok=True)
        (copy / "registry" / "smoke-24" / "v1" / name).write_bytes(storage.read_bytes(f"registry/smoke-24/v1/{name}"))
    (copy / "registry" / "smoke-24" / "v2").mkdir()
    for name in ("student.pt", "config.json", "scaler.json", "metrics.json", "_SUCCESS"):
        (copy / "registry" / "smoke-24" / "v2" / name).write_bytes((copy / "registry/smoke-24/v1" / name).read_bytes())
    (copy / "registry" / "smoke-24" / "LATEST").write_text("v2\n")
    rolled = cli("models", "rollback", "smoke-24", "--to", "v1", "--storage", str(copy))
    assert rolled == {"name": "smoke-24", "version": "v1", "previous": "v2"}
    assert (copy / "registry" / "smoke-24" / "LATEST").read_text().strip() == "v1"
    refused = runner.invoke(app, ["models", "rollback", "smoke-24", "--to", "v7", "--storage", str(copy)])
    assert refused.exit_code == 1 and "not registered" in refused.stderr
    assert (copy / "registry" / "smoke-24" / "LATEST").read_text().strip() == "v1"
