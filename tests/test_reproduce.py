"""bench/reproduce.py on a tiny ETTh1 row: the flow runs for real, the row records what a
reproduction needs (scores, sizes, latency, device, commit, seconds, seed), a second run skips it,
and the tables are made from the file."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr

import pytest

from bench import reproduce, tables
from tests.conftest import ROOT, SMOKE_ROWS

TINY = [
    f"data.max_rows={SMOKE_ROWS}", "data.split=ratio", "data.lookback=96",
    "teacher.epochs=1", "distill.epochs=1", "student.params={d_model: 32}",
]
FIELDS = {
    "dataset", "horizon", "teacher", "student", "teacher_mse", "teacher_mae", "student_mse", "student_mae",
    "mlp_mse", "mlp_mae", "teacher_params", "student_params", "teacher_latency_ms", "student_latency_ms",
    "device", "commit", "seconds", "seed",
}


@pytest.fixture(scope="module")
def campaign(ray_local, prefect_harness, tmp_path_factory):
    results, root = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("reproduce")
    argv = ["--rows", "etth1:dlinear", "--horizons", "24", "--data-dir", str(ROOT / "data"),
            "--root", str(root), "--results", str(results), "--cpus-per-worker", "1"]
    for override in TINY:
        argv += ["--set", override]
    terminal = io.StringIO()
    with redirect_stderr(terminal):
        reproduce.main(argv)
    return argv, results / "accuracy.json", terminal.getvalue()


def test_a_row_records_what_a_reproduction_needs(campaign):
    _, path, _ = campaign
    (row,) = json.loads(path.read_text())
    assert not FIELDS - set(row), FIELDS - set(row)
    assert (row["dataset"], row["horizon"], row["teacher"], row["student"]) == ("etth1", 24, "dlinear", "mlp")
    for name in ("teacher_mse", "student_mse", "mlp_mse", "teacher_mae", "student_mae", "mlp_mae"):
        assert 0 < row[name] < 10, (name, row[name])
    assert row["student_params"] > 0 and row["teacher_params"] > 0
    assert row["seconds"] > 0 and row["seed"] == 2021 and row["device"].startswith("cpu")
    assert row["commit"] and row["teacher_epochs"] == 1 and row["student_epochs"] == 1
    assert (row["alpha"], row["beta"]) == (1, 1)  # no released setting for a DLinear teacher


def test_a_second_run_skips_rows_already_in_the_file(campaign, capsys):
    argv, path, _ = campaign
    before = path.read_text()
    reproduce.main(argv)
    assert "skip etth1 h=24 dlinear->mlp [full] seed 2021: already in accuracy.json" in capsys.readouterr().out
    assert path.read_text() == before


def test_a_long_campaign_reports_every_epoch(campaign):
    *_, terminal = campaign
    assert "teacher h=24 epoch 1/1" in terminal and "distill h=24 epoch 1/1" in terminal, terminal[-2000:]


def test_the_tables_are_made_from_the_rows(campaign):
    _, path, _ = campaign
    markdown = tables.accuracy_tables(json.loads(path.read_text()))
    assert "| etth1 | dlinear | mlp |" in markdown


def test_a_missing_benchmark_file_stops_before_any_row(tmp_path):
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as stopped:
        reproduce.main(["--rows", "ettm1:itransformer", "--data-dir", str(tmp_path), "--results", str(results)])
    message = str(stopped.value.code)
    assert str(tmp_path / "ETTm1.csv") in message and "--data-dir" in message and "\n" not in message
    assert not results.exists()


def seeded_rows(variant: str, student: list[float], mlp: list[float]) -> list[dict]:
    template = json.loads((ROOT / "bench" / "results" / "ablations.json").read_text())[0]
    return [template | {"variant": variant, "seed": 2021 + i, "student_mse": s, "mlp_mse": m}
            for i, (s, m) in enumerate(zip(student, mlp, strict=True))]


def test_seeded_rows_show_their_spread_and_mark_differences_inside_it():
    rows = (seeded_rows("full", [0.370, 0.372, 0.374], [0.41, 0.42, 0.43])
            + seeded_rows("no-period", [0.371, 0.375, 0.379], [0.40, 0.41, 0.42])
            + seeded_rows("no-sup", [0.390, 0.391, 0.392], [0.41, 0.41, 0.41]))
    lines = {line.split(" | ")[0].strip("| "): line for line in tables.ablation_table(rows).splitlines()}
    assert "0.3720 ± 0.0020 (n=3)" in lines["full"] and "0.4200 ± 0.0100 (n=3)" in lines["full"]
    assert "| ~-0.8% |" in lines["no-period"]  # 0.375 against 0.372: inside the spread
    assert "| -5.1% |" in lines["no-sup"]  # 0.391 against 0.372: outside it, worse
    assert tables.Spread((0.5,)).cell() == "0.5000" and tables.Spread((0.5,)).versus(tables.Spread((0.4,))) == "-25.0%"


def test_quantile_rows_make_the_interval_table_beside_their_point_student():
    def interval(coverage: float) -> dict:
        return {"levels": [0.1, 0.5, 0.9], "method": "m", "calibration_windows": 10, "intervals": [
            {"lower": 0.1, "upper": 0.9, "val_coverage_raw": 0.7, "test_coverage_raw": 0.7,
             "test_coverage": coverage, "test_width": 1.5}]}

    point = seeded_rows("full", [0.370, 0.372, 0.374], [0.41, 0.42, 0.43])
    quantile = [row | {"intervals": interval(c)} for row, c in zip(
        seeded_rows("quantiles", [0.371, 0.373, 0.375], [0.41, 0.42, 0.43]), (0.78, 0.79, 0.80), strict=True)]
    weather = [row | {"dataset": "weather"} for row in point]  # another setting: its own ablation table
    markdown = tables.interval_table(point + quantile + weather)
    (line,) = [line for line in markdown.splitlines() if line.startswith("| ETTh1 |")]
    assert "| 0.1-0.9 | 80% | 79.0 ± 1.0 (n=3) | -1.0 | 70.0 ± 0.0 (n=3) | 70.0 ± 0.0 (n=3) |" in line
    assert "| 0.3730 ± 0.0020 (n=3) | 0.3720 ± 0.0020 (n=3) | ~-0.3% |" in line
    ablations = tables.ablation_tables(point + quantile + weather)
    assert "### ETTh1, horizon 96, itransformer teacher" in ablations and "### Weather, horizon 96" in ablations
    assert tables.interval_table(point) == "(no quantile rows yet)"
