"""The forecast contract (store/contract.py): a history is matched to the model by name, in any
column order, the same through `load_model(...).predict` and `timedistill predict` (the client and
the HTTP API: tests/test_serving.py); what cannot be matched is refused, naming what is wrong."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import timedistill
from tests.conftest import ROOT, smoke_overrides
from timedistill.flows.cli import app
from timedistill.store.contract import Card, check_times, forecast_frame, from_frame, from_json_columns
from timedistill.store.errors import InputError

runner = CliRunner()
CARD = Card(model="m-2", variables=["a", "OT"], time_column="date", step=timedelta(hours=1), ignored_columns=("note",))
HOURS = [datetime(2024, 1, 1) + timedelta(hours=k) for k in range(5)]
PERMUTED = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---- the contract on its own --------------------------------------------------------------------
def test_columns_are_matched_by_name_and_text_dates_are_read():
    frame = pl.DataFrame({"OT": [1.0, 2, 3, 4, 5], "date": [t.isoformat() for t in HOURS], "a": [9.0, 8, 7, 6, 5]})
    history = from_frame(frame, CARD)
    assert history.values.tolist() == [[9, 1], [8, 2], [7, 3], [6, 4], [5, 5]] and history.times == HOURS


def test_a_missing_variable_and_a_stranger_column_are_named_together():
    frame = pl.DataFrame({"date": HOURS, "a": [1.0] * 5, "ot": [1.0] * 5, "note": ["x"] * 5})
    with pytest.raises(InputError, match=r"it lacks 'OT' \(is 'ot' it\?\); 'ot' is not a variable of the model"):
        from_frame(frame, CARD)
    ignored = from_frame(frame.rename({"ot": "OT"}), CARD)  # `note` was not read in training either
    assert ignored.ignored == ("note",)


def test_a_long_history_and_other_times_columns():
    long = pl.DataFrame({"unique_id": ["OT"] * 5 + ["a"] * 5, "ds": HOURS * 2, "y": [*range(5), *range(10, 15)]})
    history = from_frame(long.sample(fraction=1.0, shuffle=True, seed=1), CARD)
    assert history.values[:, 0].tolist() == list(range(10, 15)) and history.times == HOURS
    other = pl.DataFrame({"when": HOURS, "a": [1.0] * 5, "OT": [2.0] * 5})  # any one column of a date type
    assert from_frame(other, CARD).times == HOURS
    with pytest.raises(InputError, match="is not a variable"):  # text under another name is not a time column
        from_frame(other.with_columns(pl.col("when").cast(pl.String)), CARD)


def test_times_out_of_order_or_at_another_step_are_refused():
    with pytest.raises(InputError, match="not in increasing order: row 4"):
        check_times([*HOURS[:4], HOURS[1]], CARD, last=5)
    with pytest.raises(InputError, match=r"1 day, 0:00:00 apart .* steps of 1:00:00"):
        check_times([datetime(2024, 1, d) for d in range(1, 6)], CARD, last=5)


def test_json_columns_and_records_make_the_same_frame():
    columns = {"date": ["2024-01-01T00:00:00"], "a": [1.5], "OT": [None]}
    records = [{"date": "2024-01-01T00:00:00", "a": 1.5, "OT": None}]
    assert from_json_columns(columns).equals(from_json_columns(records))
    with pytest.raises(InputError, match="different lengths"):
        from_json_columns({"a": [1.0], "OT": [1.0, 2.0]})


def test_forecasts_are_named_alike_wide_and_long():
    point, quantiles = np.arange(6.0).reshape(3, 2), {0.1: np.zeros((3, 2)), 0.5: np.ones((3, 2)), 0.9: np.ones((3, 2))}
    wide = forecast_frame(point, quantiles, ["a", "OT"], HOURS[:3], "date")
    assert wide.columns == ["date", "a", "OT", "a_q0.1", "a_q0.9", "OT_q0.1", "OT_q0.9"]
    long = forecast_frame(point, quantiles, ["a", "OT"], HOURS[:3], "date", layout="long")
    assert long.columns == ["unique_id", "ds", "y", "y_q0.1", "y_q0.9"]
    assert long.filter(pl.col("unique_id") == "OT")["y"].to_list() == [1.0, 3.0, 5.0]
    assert forecast_frame(point, None, ["a", "OT"], None, "date").columns == ["step", "a", "OT"]


# ---- through the registered smoke model ---------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(smoke_pipeline, session_root, smoke_csv):
    frame = pl.read_csv(smoke_csv)  # Polars' defaults: the date column is text
    model = timedistill.load_model("smoke-24", version="v1", storage=session_root)
    return {"model": model, "frame": frame, "csv": smoke_csv, "expected": model.predict(frame),
            "sets": [arg for item in smoke_overrides(session_root, smoke_csv) for arg in ("--set", item)]}


@PERMUTED
@given(order=st.permutations(["date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]))
def test_any_column_order_gives_the_same_forecast_through_load_model(smoke, order):
    got = smoke["model"].predict(smoke["frame"].select(order))
    assert got.equals(smoke["expected"])
    assert got.columns[0] == "date" and got["date"][0] == datetime(2016, 8, 3, 8)  # dated after the last row
    as_pandas = smoke["model"].predict(smoke["frame"].select(order).to_pandas())
    assert np.allclose(as_pandas[smoke["model"].variables].to_numpy(),
                       smoke["expected"].select(smoke["model"].variables).to_numpy())


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(["date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]))
def test_any_column_order_gives_the_same_forecast_through_predict(smoke, tmp_path_factory, order):
    folder = tmp_path_factory.mktemp("permuted")
    smoke["frame"].select(order).write_csv(folder / "in.csv")
    result = runner.invoke(app, ["predict", "smoke", "--model", "smoke-24", "--version", "v1", "--data",
                                 str(folder / "in.csv"), "--output", str(folder / "out.parquet"), "--json",
                                 *smoke["sets"]])
    assert result.exit_code == 0, result.output
    written = pl.read_parquet(folder / "out.parquet")
    expected = smoke["expected"]
    assert written.select(expected.columns).equals(expected)


def test_the_wrong_shape_of_history_is_refused_with_what_is_wrong(smoke):
    model, frame = smoke["model"], smoke["frame"]
    with pytest.raises(InputError, match=r"lacks 'OT'"):
        model.predict(frame.drop("OT"))
    with pytest.raises(InputError, match=r"'extra' is not a variable"):
        model.predict(frame.with_columns(extra=pl.lit(1.0)))
    with pytest.raises(InputError, match="not in increasing order"):
        model.predict(frame.reverse())
    with pytest.raises(InputError, match=r"columns in the order \['HUFL'"):  # arrays are positional
        model.predict(np.zeros((96, 6)))
    long = model.predict(frame.unpivot(index="date", variable_name="unique_id", value_name="y").rename({"date": "ds"}))
    assert long.columns == ["unique_id", "ds", "y"] and long.height == 24 * 7


def test_predict_reads_every_row_whatever_max_rows_says(smoke, tmp_path):
    """The smoke config keeps 800 rows for training; a forecast from a longer file starts at its end."""
    longer = tmp_path / "longer.csv"
    text = (ROOT / "data" / "ETTh1.csv").read_text().splitlines()[:1201]
    longer.write_text("\n".join(text) + "\n")
    result = runner.invoke(app, ["predict", "smoke", "--model", "smoke-24", "--version", "v1", "--input", str(longer),
                                 "--output", str(tmp_path / "out.parquet"), "--json", *smoke["sets"]])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["source_rows"] == 1200 and summary["last_origin"] == "2016-08-19 23:00:00"
