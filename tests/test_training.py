"""Teacher training, the teacher cache and distillation through a real local Ray (Ray Train and
Ray Data), on the smoke config: tiny models, one epoch."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from timedistill import models
from timedistill.conf import load_config
from timedistill.flows.cli import app
from timedistill.store.series import standardized_series
from timedistill.store.weights import load_teacher, load_trained
from timedistill.tasks.cache import cache_table, read_cache_split, unpack
from timedistill.tasks.faults import CrashOnce
from timedistill.tasks.steps import RunContext, ingest_step, teacher_step
from timedistill.tasks.students import DistillStep
from timedistill.tasks.teacher import teacher_key
from timedistill.tasks.windows import WindowBatcher, window_counts, window_starts

runner = CliRunner()


def smoke(root, *extra):
    return load_config("smoke", [f"storage.root={root}", *extra])


@pytest.fixture(scope="module")
def trained(smoke_pipeline):
    """Teacher -> cache -> student + baseline, as the session's retrain flow left them."""
    return smoke_pipeline


def test_teacher_is_trained_and_stored(trained):
    teacher, pipe = trained.teacher, trained
    assert trained.summary.steps["teacher"].cached is False  # the flow really trained it
    assert teacher.epochs == 1 and teacher.name == "itransformer"
    assert np.isfinite(teacher.val_mse) and np.isfinite(teacher.test_mse)
    assert teacher.params == models.build_model("itransformer", lookback=96, horizon=24, n_vars=7,
                                                **teacher.hparams).num_params()
    model = load_teacher(pipe.storage, teacher)  # weights_only=True inside
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    # a second request reuses it: same key, nothing trained
    assert teacher_step(trained.run, trained.dataset, 24).cached
    assert teacher.key == teacher_key(trained.config, pipe.dataset, 24)
    changed = smoke("x", "teacher.lr=0.01")
    assert teacher_key(changed, pipe.dataset, 24) != teacher.key


def test_cache_holds_every_window_in_float16(trained):
    cache, pipe = trained.cache, trained
    expected = window_counts(pipe.dataset.splits, 96, 24)
    assert cache.rows == expected
    assert cache.bytes > 0 and cache.teacher_forward_batches >= 3
    assert cache.feature_dim == min(trained.teacher.feature_dim, 64)
    for split, count in expected.items():
        part = read_cache_split(pipe.storage, cache, split)
        assert part.window_id.tolist() == list(range(count))  # keyed by window_id, all present
        assert part.prediction.dtype == np.float16 and part.prediction.shape == (count, 24, 7)
        assert part.feature.shape == (count, 7, cache.feature_dim)
        assert pipe.storage.read_json(f"{cache.directory}/{split}/_SUCCESS")["rows"] == count


def test_cached_rows_come_back_in_window_order_whatever_order_they_arrive_in():
    """Ray Data delivers a shard's part files in the order their reads finish; the rows that reach
    the trainer must not depend on it (they decide every batch of a seeded run)."""
    ids = np.arange(10)
    prediction = np.arange(10 * 4 * 2, dtype=np.float16).reshape(10, 4, 2)
    feature = -np.arange(10 * 2 * 3, dtype=np.float16).reshape(10, 2, 3)
    late_first = pa.concat_tables([cache_table(ids[6:], prediction[6:], feature[6:]),
                                   cache_table(ids[:6], prediction[:6], feature[:6])])
    rows = unpack(late_first, horizon=4, n_vars=2, feature_dim=3)
    assert rows.window_id.tolist() == ids.tolist()
    assert np.array_equal(rows.prediction, prediction) and np.array_equal(rows.feature, feature)


def test_cache_loss_equals_online_loss(trained):
    """The loss from cached teacher outputs matches the loss with the teacher run online."""
    pipe, teacher, cache = trained, trained.teacher, trained.cache
    series = standardized_series(pipe.storage, pipe.dataset)
    starts = window_starts(pipe.dataset.splits["train"], 96, 24)
    ids = np.arange(40, 72)
    x, y = WindowBatcher(series, 96, 24)(starts[ids])
    torch.manual_seed(0)
    student = models.build_model("mlp", lookback=96, horizon=24, n_vars=7, d_model=64)
    loss = models.TimeDistillLoss(cache.feature_dim, student.feature_dim, alpha=1.0, beta=1.0)
    step = DistillStep(student, loss)
    frozen = load_teacher(pipe.storage, teacher)
    with torch.no_grad():
        online_pred, online_feat = frozen(x)
        reduced = models.reduce_feature_width(online_feat, cache.feature_dim)
        online_total, online_parts = step(x, y, [online_pred], [reduced])
        stored = read_cache_split(pipe.storage, cache, "train")
        cached_total, cached_parts = step(x, y, [torch.from_numpy(stored.prediction[ids]).float()],
                                          [torch.from_numpy(stored.feature[ids]).float()])
    assert torch.allclose(online_total, cached_total, rtol=2e-3, atol=1e-4)
    for name in online_parts:
        assert torch.allclose(online_parts[name], cached_parts[name], rtol=5e-3, atol=1e-4), name


def test_students_are_trained_with_the_baseline(trained):
    students, row = trained.students, trained.row
    assert set(students.models) == {"student", "baseline"}
    assert students.use_cache and students.teacher_forward_batches == 0
    assert trained.summary.steps["distill"].cached is False
    for role in ("student", "baseline"):
        info = students.models[role]
        assert info.params == 2 * (96 * 64 + 64) + 2 * (64 * 24 + 24) + 2 * 2 * 7
        assert np.isfinite(info.test_mse)
        model = load_trained(trained.storage, students, role)
        assert isinstance(model, torch.nn.Module)
    history = students.student.history[0]
    assert {"sup", "pred_scale", "pred_period", "feat_scale", "feat_period"} <= set(history.parts)
    assert row.teacher.name == "itransformer" and row.horizon == 24
    assert row.param_ratio == pytest.approx(row.teacher.params / row.student.params)
    # latency: timed by the evaluate step, each model the same way (batch, threads stated)
    (timed,) = trained.summary.results
    assert (timed.latency_batch, timed.latency_threads) == (32, 1)
    assert all(score.latency_ms > 0 for score in timed.scores().values())
    assert timed.speedup == pytest.approx(timed.teacher.latency_ms / timed.student.latency_ms)


def test_cli_teacher_json_reuses_the_trained_teacher(trained, session_root, smoke_csv):
    result = runner.invoke(app, ["teacher", "smoke", "--set", f"storage.root={session_root}",
                                 "--set", f"data.path={smoke_csv}", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    (row,) = payload["results"]
    assert row["dataset"] == "smoke" and row["horizon"] == 24 and row["epochs"] == 1 and row["cached"]
    assert row["val_mse"] == pytest.approx(trained.teacher.val_mse)
    assert row["checkpoint"].endswith("teacher.pt")


def test_second_distill_reads_the_cache(trained, session_root, smoke_csv):
    """A new distillation (other alpha: a new run) reuses the cache and never runs the teacher."""
    result = runner.invoke(app, ["distill", "smoke", "--set", f"storage.root={session_root}",
                                 "--set", f"data.path={smoke_csv}", "--set", "distill.alpha=0.5", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["cache"]["hit"] is True and payload["cache"]["teacher_forward_batches"] == 0
    assert payload["cache"]["path"].endswith(trained.cache.directory)
    (row,) = payload["results"]
    for role in ("teacher", "student", "baseline"):
        assert {"name", "test_mse", "test_mae", "params", "latency_ms"} <= set(row[role])
    assert row["student"]["test_mse"] != trained.row.student.test_mse  # really retrained
    # the plain MLP ignores the teacher: same seed, same batches, same weights, whatever alpha is
    assert row["baseline"]["test_mse"] == pytest.approx(trained.row.baseline.test_mse, rel=1e-6)


def test_distill_without_a_teacher_says_what_to_do(tmp_path, ray_local):
    result = runner.invoke(app, ["distill", "smoke", "--set", f"storage.root={tmp_path}"])
    assert result.exit_code == 1
    assert "run `timedistill teacher`" in result.stderr


def test_a_killed_worker_resumes_from_its_checkpoint(ray_local, tmp_path):
    """Worker 1 of 2 crashes at the start of epoch 2; Ray Train restarts the group, which resumes
    from the epoch-1 checkpoint and finishes."""
    config = smoke(tmp_path, "teacher.epochs=2", "teacher.patience=5", "ray.num_workers=2",
                   "ray.cpus_per_worker=0.5")
    marker = tmp_path / "fault-fired"
    with RunContext(config) as pipe:
        teacher = teacher_step(pipe, ingest_step(pipe), 24,
                               callbacks=[CrashOnce(epoch=1, rank=1, marker=str(marker))]).chosen
    assert marker.exists()  # the failure really happened
    assert teacher.epochs == 2
    assert teacher.resumed_from == 1  # the final attempt started at epoch 2, not 1
    assert [h.epoch for h in teacher.history] == [1, 2]
    state = torch.load(io.BytesIO(pipe.storage.read_bytes(teacher.weights_path)), weights_only=True)
    assert state.keys() == load_teacher(pipe.storage, teacher).state_dict().keys()
