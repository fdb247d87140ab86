"""Forecasts out of the registry without a server: timedistill.load_model(...).predict(frame) and
`timedistill predict` (one origin in process, a backtest over Ray Data), on the smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

import timedistill
from tests.conftest import smoke_overrides
from timedistill.flows.cli import app
from timedistill.store.errors import InputError
from timedistill.store.forecaster import ForecastModel
from timedistill.store.predictor import Predictor
from timedistill.tasks.predict import forecast_origins
from timedistill.tasks.windows import WindowBatcher, window_starts

runner = CliRunner()


@pytest.fixture(scope="module")
def smoke(smoke_pipeline, session_root, smoke_csv):
    frame = pl.read_csv(smoke_csv, try_parse_dates=True)
    return {"run": smoke_pipeline, "root": session_root, "csv": smoke_csv, "frame": frame,
            "sets": [arg for item in smoke_overrides(session_root, smoke_csv) for arg in ("--set", item)]}


def test_load_model_predicts_a_dated_named_frame(smoke):
    model = timedistill.load_model("smoke-24", version="v1", storage=smoke["root"])
    history = smoke["frame"].head(300)
    forecast = model.predict(history)
    assert forecast.columns == ["date", *model.variables] and forecast.height == 24
    assert forecast["date"][0] == history["date"][-1] + timedelta(hours=1)
    expected = ForecastModel.from_registry(smoke["run"].storage, "smoke-24", "v1").forecast(
        history.select(model.variables).to_numpy()[None, -96:])[0]
    assert np.allclose(forecast.select(model.variables).to_numpy(), expected, rtol=1e-6, atol=1e-6)
    as_pandas = model.predict(history.to_pandas().set_index("date"))  # a DatetimeIndex dates it too
    assert list(as_pandas.columns) == ["date", *model.variables]
    assert np.allclose(as_pandas[model.variables].to_numpy(), expected, rtol=1e-6, atol=1e-6)
    from_array = model.predict(history.select(model.variables).to_numpy())  # no dates: steps 1..24
    assert from_array["step"].to_list() == list(range(1, 25))
    with pytest.raises(InputError, match="needs at least 96"):
        model.predict(history.head(50))
    with pytest.raises(InputError, match="lacks 'OT'"):
        model.predict(history.drop("OT"))


def test_predict_from_the_last_window(smoke, tmp_path):
    output = tmp_path / "out" / "last.parquet"
    result = runner.invoke(app, ["predict", "smoke", "--model", "smoke-24", "--version", "v1", "--input",
                                 str(smoke["csv"]), "--output", str(output), "--json", *smoke["sets"]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["origins"], summary["rows"], summary["scored"], summary["mse"]) == (1, 24, 0, None)
    written = pl.read_parquet(output)
    assert written.columns[:3] == ["origin", "date", "step"] and written["origin"][0] == smoke["frame"]["date"][-1]
    long = runner.invoke(app, ["predict", "smoke", "--model", "smoke-24", "--input", str(smoke["csv"]),
                               "--output", str(tmp_path / "long.parquet"), "--layout", "long", *smoke["sets"]])
    assert long.exit_code == 0, long.output
    long_columns = pl.read_parquet(tmp_path / "long.parquet").columns
    assert long_columns == ["origin", "unique_id", "ds", "step", "y"]  # the forecast contract's long names


def test_a_backtest_over_the_test_windows_reproduces_the_registered_test_mse(smoke, tmp_path, ray_local):
    """Every origin of the test split, in the command's process (the default for this many) and on
    Ray Data (`--engine ray`): the same forecasts, and an overall MSE that is the student's
    registered test MSE, computed again through the predict path."""
    dataset = smoke["run"].dataset
    starts = window_starts(dataset.splits["test"], 96, 24)
    dates = smoke["frame"]["date"]
    first, last = dates[int(starts[0]) + 95], dates[int(starts[-1]) + 95]  # the last history row of each
    summaries = {}
    for engine in ("auto", "ray"):
        output = tmp_path / f"backtest-{engine}.parquet"
        result = runner.invoke(app, ["predict", "smoke", "--model", "smoke-24", "--version", "v1", "--input",
                                     str(smoke["csv"]), "--output", str(output), "--origins", f"{first}:{last}",
                                     "--engine", engine, "--json", *smoke["sets"]])
        assert result.exit_code == 0, result.output
        summaries[engine] = json.loads(result.stdout.strip().splitlines()[-1])
    local, spread = summaries["auto"], summaries["ray"]
    assert (local["engine"], spread["engine"]) == ("process", "ray")
    assert local["origins"] == local["scored"] == len(starts)
    registered = smoke["run"].row.student.test_mse
    assert local["mse"] == pytest.approx(registered, rel=1e-4)
    assert spread["mse"] == pytest.approx(local["mse"], rel=1e-9) and spread["mae"] == pytest.approx(local["mae"],
                                                                                                      rel=1e-9)
    forecasts = [pl.read_parquet(tmp_path / f"backtest-{engine}.parquet") for engine in ("auto", "ray")]
    assert forecasts[0].height == len(starts) * 24 and forecasts[0].equals(forecasts[1])
    scores = pl.read_parquet(local["scores_output"])
    assert scores.height == len(starts) and scores["mse"].mean() == pytest.approx(registered, rel=1e-4)


def test_origins_beyond_one_forward_batch_are_forecast_batch_by_batch(smoke, monkeypatch):
    """An actor's share of origins can exceed one forward batch (many variables shrink it): the
    forecasts come batch by batch and are those of a single batch."""
    predictor = Predictor.load(smoke["run"].storage, "smoke-24", "v1")
    values, timestamps = smoke["frame"].select(predictor.variables).to_numpy(), smoke["frame"]["date"]
    ends = np.arange(96, 96 + 12)  # 12 origins, each with its truth
    whole = forecast_origins(predictor, values, timestamps, ends)
    monkeypatch.setattr(WindowBatcher, "inference_batch", property(lambda batcher: 5))
    batched = forecast_origins(predictor, values, timestamps, ends)
    assert batched.height == 12 * 24 and batched["origin"].n_unique() == 12
    assert_frame_equal(batched, whole)


LIGHT = """
import json, sys
import ray
from typer.testing import CliRunner
from timedistill.flows.cli import app


def refused(*args, **kwargs):
    raise AssertionError("a light command started Ray")


ray.init = refused
outcomes = [CliRunner().invoke(app, args) for args in json.loads(sys.argv[1])]
print(json.dumps({"exit_codes": [outcome.exit_code for outcome in outcomes],
                  "output": [outcome.output[-500:] for outcome in outcomes],
                  "prefect_server": "prefect.server.api.server" in sys.modules}))
"""


def test_light_commands_start_no_ray_and_no_prefect_server(smoke, tmp_path):
    """predict (the last window and a backtest of every origin), monitor, models and export, each
    as a command runs it in a process of its own, with no cluster named: none calls ray.init, and
    none imports Prefect's server (a flow run without PREFECT_API_URL would start a temporary one)."""
    storage = ["--storage", str(smoke["root"])]
    predict = ["predict", "smoke", "--model", "smoke-24", "--version", "v1", "--data", str(smoke["csv"]),
               *smoke["sets"]]
    commands = [
        [*predict, "--output", str(tmp_path / "last.parquet")],
        [*predict, "--origins", "all", "--output", str(tmp_path / "all.parquet")],
        ["monitor", "smoke", *smoke["sets"]],
        ["models", "list", *storage],
        ["models", "show", "smoke-24", *storage],
        ["export", "smoke-24", "--format", "onnx", "--output", str(tmp_path / "exports"), *storage],
    ]
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "PREFECT_API_URL")}
    done = subprocess.run([sys.executable, "-c", LIGHT, json.dumps(commands)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    codes = report["exit_codes"]
    assert codes[2] in (0, 3) and codes[:2] + codes[3:] == [0] * 5, report  # monitor: 3 where the model drifted
    assert not report["prefect_server"]


def test_bad_predict_input_is_one_line(smoke, tmp_path):
    cases = {"--origins": ["--origins", "yesterday"], "model": ["--model", "nope-1"]}
    for case, extra in cases.items():
        args = ["predict", "smoke", "--model", "smoke-24", "--input", str(smoke["csv"]), *smoke["sets"], *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (case, result.output)
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_a_quantile_model_predicts_its_quantiles_beside_the_forecast(quantile_run, smoke_csv, tmp_path):
    """load_model(...).predict and `timedistill predict` (both layouts) of the quantile run: a
    column per variable and level besides the median, ordered around the point forecast, which
    stays the model's own (its median)."""
    frame = pl.read_csv(smoke_csv, try_parse_dates=True)
    model = timedistill.load_model(quantile_run.model, storage=quantile_run.root)
    bounds = [f"{name}_q{level}" for name in model.variables for level in ("0.1", "0.9")]
    forecast = model.predict(frame.head(300))
    assert forecast.columns == ["date", *model.variables, *bounds] and forecast.height == 24
    expected = model.forecaster.forecast(frame.head(300).select(model.variables).to_numpy()[None, -96:])[0]
    assert np.allclose(forecast.select(model.variables).to_numpy(), expected, rtol=1e-6, atol=1e-6)
    for name in model.variables:
        assert (forecast[f"{name}_q0.1"] <= forecast[name] + 1e-6).all()
        assert (forecast[name] <= forecast[f"{name}_q0.9"] + 1e-6).all()
    assert list(model.predict(frame.head(300).to_pandas()).columns) == forecast.columns

    sets = [arg for item in smoke_overrides(quantile_run.root, smoke_csv) for arg in ("--set", item)]
    for layout in ("wide", "long"):
        result = runner.invoke(app, ["predict", "smoke", "--model", quantile_run.model, "--input", str(smoke_csv),
                                     "--output", str(tmp_path / f"{layout}.parquet"), "--layout", layout, *sets])
        assert result.exit_code == 0, result.output
    wide, long = pl.read_parquet(tmp_path / "wide.parquet"), pl.read_parquet(tmp_path / "long.parquet")
    assert wide.columns == ["origin", "date", "step", *model.variables, *bounds]
    assert long.columns == ["origin", "unique_id", "ds", "step", "y", "y_q0.1", "y_q0.9"] and long.height == 24 * 7
    assert (long["y_q0.1"] <= long["y"] + 1e-6).all() and (long["y"] <= long["y_q0.9"] + 1e-6).all()
    ot = long.filter(pl.col("unique_id") == "OT")
    assert ot["y_q0.1"].to_list() == wide["OT_q0.1"].to_list() and ot["y_q0.9"].to_list() == wide["OT_q0.9"].to_list()
