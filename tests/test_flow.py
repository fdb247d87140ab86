"""The retrain flow through Prefect's test harness and a real local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import smoke_overrides
from timedistill.conf import load_config
from timedistill.flows.retrain import artifact_key, deployment, retrain
from timedistill.tasks import steps
from timedistill.tasks.errors import DataError
from timedistill.tasks.steps import STEPS


def test_the_smoke_flow_runs_end_to_end(smoke_run, session_root):
    summary = smoke_run
    assert list(summary.steps) == list(STEPS)
    assert all(step.cached is False for step in summary.steps.values()), summary.steps
    assert all(step.seconds >= 0 for step in summary.steps.values())
    (model,) = summary.models
    assert model.name == "smoke-24" and model.version == "v1" and model.registered
    assert {"teacher", "student", "baseline"} == set(model.metrics)
    run_dir = Path(summary.run_dir)
    assert run_dir.parent == session_root / "runs" / "smoke"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics.pop("record_format") == 2 and metrics == summary.to_json()
    report = (run_dir / "report.md").read_text()
    assert "distilled student (mlp)" in report and "MLP baseline" in report
    assert (run_dir / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (session_root / "registry" / "smoke-24" / "LATEST").read_text().strip() == "v1"
    assert "Few epochs (teacher 1, student 1, MLP 1)" in report  # whatever the config is called
    saved = load_config(str(run_dir / "config.yaml"))  # the whole config it ran with, ready to run again
    assert saved.data.name == "smoke" and saved.data.max_rows == 800 and saved.teacher.epochs == 1


def test_fit_trains_from_a_frame_of_ones_own_and_returns_it_ready_to_predict(ray_local, tmp_path):
    """timedistill.fit on a long frame (neuralforecast's columns), no file and no settings but the
    horizon: read, trained, registered as <name>-<horizon>, and forecasting the frame's next steps."""
    from datetime import datetime, timedelta

    import numpy as np
    import polars as pl

    import timedistill

    hours = [datetime(2024, 1, 1) + timedelta(hours=k) for k in range(800)]
    frame = pl.concat([pl.DataFrame({"unique_id": uid, "ds": hours, "y": np.sin(np.arange(800) / 4 + k) + k})
                       for k, uid in enumerate(["north", "south"])])
    model = timedistill.fit(frame, horizon=12, config="smoke", name="grid", storage=tmp_path, lookback=48,
                            quiet=True)
    assert (model.name, model.version, model.variables) == ("grid-12", "v1", ["north", "south"])
    forecast = model.predict(frame)  # a long history answers in the long layout
    assert forecast.columns == ["unique_id", "ds", "y"] and forecast["ds"][0] == hours[-1] + timedelta(hours=1)
    (run,) = (tmp_path / "runs" / "grid").iterdir()
    assert load_config(str(run / "config.yaml")).data.path.startswith(str(tmp_path / "sources" / "grid"))


def test_the_results_table_is_a_prefect_artifact(smoke_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    key = artifact_key("smoke")
    with get_client(sync_client=True) as client:
        found = {artifact.key: artifact for artifact in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key, f"{key}-table", f"{key}-forecast", f"{key}-training"])))}
    assert found[key].type == "markdown" and "distilled student" in found[key].data
    assert "![forecasts](forecast.png)" in found[key].data
    assert found[f"{key}-table"].type == "table" and "test_mse" in found[f"{key}-table"].data
    assert found[f"{key}-forecast"].type == "markdown" and "forecast.png" in found[f"{key}-forecast"].data  # a link
    assert "training.png" in found[f"{key}-training"].data


def test_epochs_are_in_the_run_log_and_reused_steps_are_skipped(smoke_run, session_root, smoke_csv):
    """What the Prefect UI shows of a run without a terminal: each epoch in the flow run's log,
    and the steps that found their output done in a state named Skipped."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterTextSearch

    state = retrain(config="smoke", overrides=smoke_overrides(session_root, smoke_csv), return_state=True)
    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        steps = {run.name.rsplit("-", 1)[0]: run.state.name for run in client.read_task_runs(flow_run_filter=this_run)}
        phrase = LogFilterTextSearch(query='"teacher h=24 epoch 1/1"')  # quoted: the phrase, not any of its words
        logs = client.read_logs(log_filter=LogFilter(text=phrase), limit=200)
    assert steps["teacher"] == "Skipped" and steps["distill"] == "Skipped" and steps["evaluate"] == "Completed"
    assert any("teacher h=24 epoch 1/1" in log.message for log in logs)  # the session's first, training run


def test_a_second_run_skips_what_is_done(smoke_run, session_root, smoke_csv):
    again = retrain(config="smoke", overrides=smoke_overrides(session_root, smoke_csv))
    for step in ("ingest", "teacher", "cache", "distill", "register"):
        assert again.steps[step].cached is True, step
    (model,) = again.models
    assert not model.registered and model.reason.startswith("already registered")
    assert again.results[0].student.test_mse == smoke_run.results[0].student.test_mse


def test_a_transient_failure_is_retried(smoke_run, session_root, smoke_csv, monkeypatch):
    """The ingest step's storage fails once; Prefect retries the step."""
    calls = {"n": 0}
    original = steps.ingest

    def flaky(config, storage):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("storage hiccup")
        return original(config, storage)

    monkeypatch.setattr(steps, "ingest", flaky)
    summary = retrain(config="smoke", overrides=smoke_overrides(session_root, smoke_csv))
    assert calls["n"] == 2
    assert summary.steps["ingest"].cached is True


def test_bad_data_is_not_retried(smoke_run, session_root, smoke_csv, monkeypatch):
    calls = {"n": 0}

    def broken(config, storage):
        calls["n"] += 1
        raise DataError("smoke.csv: line 5: cannot parse timestamp 'x'")

    monkeypatch.setattr(steps, "ingest", broken)
    with pytest.raises(DataError, match="line 5"):
        retrain(config="smoke", overrides=smoke_overrides(session_root, smoke_csv))
    assert calls["n"] == 1


def test_a_schedule_registers_with_prefect(prefect_harness):
    from prefect.client.orchestration import get_client

    runnable = deployment("smoke", "0 3 * * *", overrides=["distill.alpha=0.5"])
    deployment_id = runnable.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert stored.name == "retrain-smoke"
    assert stored.parameters == {"config": "smoke", "overrides": ["distill.alpha=0.5"], "ray_address": None}
    assert [s.schedule.cron for s in stored.schedules] == ["0 3 * * *"]


def test_changed_data_reruns_everything_downstream(smoke_run, session_root, smoke_csv, tmp_path):
    """(Last in this file: it registers v2 of smoke-24.)"""
    changed = tmp_path / "changed.csv"
    lines = smoke_csv.read_text().splitlines()
    fields = lines[100].split(",")
    fields[-1] = str(float(fields[-1]) + 1.0)
    lines[100] = ",".join(fields)
    changed.write_text("\n".join(lines) + "\n")
    summary = retrain(config="smoke", overrides=smoke_overrides(session_root, changed))
    for step in ("ingest", "teacher", "cache", "distill", "register"):
        assert summary.steps[step].cached is False, step
    assert summary.data_fingerprint != smoke_run.data_fingerprint
    assert summary.run_dir != smoke_run.run_dir
    (model,) = summary.models
    assert model.registered and model.version == "v2"
    assert (session_root / "registry" / "smoke-24" / "LATEST").read_text().strip() == "v2"


def test_teacher_auto_keeps_the_candidate_with_the_lowest_validation_mse(ray_local, prefect_harness, smoke_csv,
                                                                         two_teachers_root):
    from timedistill.conf import load_config

    own_root = [*smoke_overrides(two_teachers_root, smoke_csv), "teacher.params={}", "teacher.preset=ettm1"]
    auto = ["teacher.name=auto", "teacher.candidates=[dlinear, itransformer]"]
    summary = retrain(config="smoke", overrides=[*own_root, *auto])
    (choice,) = summary.teacher_choices
    val_mse = {score.name: score.val_mse for score in choice.candidates}
    assert list(val_mse) == ["dlinear", "itransformer"] and len(set(val_mse.values())) == 2
    assert choice.chosen == min(val_mse, key=val_mse.get)
    (teacher,) = summary.teachers
    assert teacher.name == summary.results[0].teacher.name == choice.chosen
    run_dir = Path(summary.run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["teacher_choices"] == [choice.to_json()]
    report = (run_dir / "report.md").read_text()
    assert all(f"| 24 | {name} | {mse:.4f} |" in report for name, mse in val_mse.items())
    # each candidate was trained as if named alone: a run that names it reuses it
    with steps.RunContext(load_config("smoke", [*own_root, f"teacher.name={choice.chosen}"])) as run:
        assert steps.teacher_step(run, steps.ingest_step(run), 24).cached


def test_an_unknown_candidate_fails_before_any_training(smoke_csv, tmp_path):
    from timedistill.conf import ConfigError, load_config

    config = load_config("smoke", [*smoke_overrides(tmp_path, smoke_csv), "teacher.params={}", "teacher.name=auto",
                                   "teacher.candidates=[dlinear, transformerx]"])
    with steps.RunContext(config) as run, pytest.raises(ConfigError, match=r"teacher\.candidates: unknown model "
                                                                             r"'transformerx'"):
        steps.teacher_step(run, steps.ingest_step(run), 24)
    assert not (tmp_path / "teachers").exists()
