"""Quantile students (student.quantiles): non-crossing quantiles, the pinball loss, and intervals
calibrated on the validation split, stored with the weights and reported per horizon."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from timedistill.models import MLP, QuantileStudent, build_model, check_levels, pinball_loss
from timedistill.models.mlp import MLPConfig
from timedistill.store.series import standardized_series
from timedistill.store.weights import build_forecaster, load_trained, resolve_spec


def small_quantile_student(levels=(0.1, 0.25, 0.5, 0.75, 0.9)) -> QuantileStudent:
    torch.manual_seed(0)
    return QuantileStudent(MLP(MLPConfig(lookback=48, horizon=12, n_vars=3, d_model=16)), levels)


def test_quantiles_are_ordered_around_the_students_own_forecast():
    model = small_quantile_student().eval()
    x = torch.randn(8, 48, 3)
    forecast, quantiles = model.quantiles(x)
    assert quantiles.shape == (8, 5, 12, 3)
    assert torch.equal(forecast.prediction, model(x).prediction)  # forward is the median, unchanged
    assert torch.equal(quantiles[:, 2], forecast.prediction)
    assert (quantiles.diff(dim=1) >= 0).all()


def test_the_correction_moves_both_ends_of_its_interval_and_never_crosses_levels():
    model = small_quantile_student().eval()
    x = torch.randn(4, 48, 3)
    _, raw = model.quantiles(x)
    model.widen[0].fill_(0.3)  # the outer (0.1-0.9) interval
    _, wider = model.quantiles(x)
    assert torch.allclose(wider[:, 0], raw[:, 0] - 0.3) and torch.allclose(wider[:, 4], raw[:, 4] + 0.3)
    assert torch.equal(wider[:, 1:4], raw[:, 1:4])
    model.widen.fill_(-50.0)  # a correction far inward still gives ordered quantiles
    assert (model.quantiles(x)[1].diff(dim=1) >= 0).all()
    assert "widen" in model.state_dict()  # saved and loaded with the weights


def test_the_pinball_loss_weighs_each_side_by_its_level():
    target = torch.zeros(1, 1, 1)
    quantiles = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)  # both above the truth by 1
    assert float(pinball_loss(quantiles, target, (0.1, 0.9))) == pytest.approx((0.9 + 0.1) / 2)
    below = -quantiles  # both below the truth by 1
    assert float(pinball_loss(below, target, (0.1, 0.9))) == pytest.approx((0.1 + 0.9) / 2)


@pytest.mark.parametrize("levels", [(0.1, 0.9), (0.5, 0.1, 0.9), (0.0, 0.5, 1.0), (0.2, 0.5, 0.9)])
def test_levels_that_do_not_make_central_intervals_are_refused(levels):
    with pytest.raises(ValueError, match="quantiles"):
        check_levels(levels)


def test_a_seed_gives_the_point_model_the_same_weights_with_or_without_quantiles():
    """The baseline and the quantile student start from the same weights (ModelSpec.build)."""

    spec = resolve_spec("student", "mlp", lookback=48, horizon=12, n_vars=3, preset=None,
                             params={"d_model": 16}, quantiles=[0.1, 0.5, 0.9])
    torch.manual_seed(7)
    quantile = build_forecaster(spec)
    torch.manual_seed(7)
    point = build_forecaster(spec.point())
    assert isinstance(quantile, QuantileStudent) and not isinstance(point, QuantileStudent)
    assert all(torch.equal(a, b) for a, b in zip(quantile.student.state_dict().values(),
                                                 point.state_dict().values(), strict=True))
    assert spec.point().to_json() == resolve_spec("student", "mlp", lookback=48, horizon=12, n_vars=3,
                                                       preset=None, params={"d_model": 16}).to_json()
    assert isinstance(build_model("mlp", lookback=48, horizon=12, n_vars=3), MLP)


def test_weighted_quantile_with_equal_weights_is_split_conformals_rank():
    from timedistill.tasks.intervals import recency_weights, weighted_quantile

    score = torch.randn(57, 4, 3)
    for share in (0.5, 0.8, 0.9):
        rank = int(np.ceil(58 * share))  # the ceil((n + 1)(1 - a))-th smallest
        expected = score.kthvalue(rank, dim=0).values
        assert torch.equal(weighted_quantile(score, recency_weights(57, float("inf")), share), expected)
    newest_only = weighted_quantile(score, recency_weights(57, 1e-3), 0.5)  # old windows weigh nothing
    assert torch.equal(newest_only, score[-1])


def test_the_calibrated_intervals_cover_the_validation_split_and_are_reported(quantile_run):
    """Weighted split conformal sets each interval so that, per step and variable, at least its
    share of the validation values falls inside, each value counted with its window's recency
    weight: so at least that share overall, a property of the stored weights that a wrong
    correction (sign, rank, weights' direction, interval order) breaks."""
    from timedistill.store.records import RegistryEntry
    from timedistill.store.registry import read_version
    from timedistill.store.storage import Storage
    from timedistill.tasks.intervals import recency_weights
    from timedistill.tasks.steps import RunContext, ingest_step
    from timedistill.tasks.windows import WindowBatcher, window_starts

    run, storage = quantile_run.students, Storage(str(quantile_run.root))
    (interval,) = run.intervals.intervals
    assert (interval.lower, interval.upper) == (0.1, 0.9) and run.intervals.levels == [0.1, 0.5, 0.9]
    assert run.student.quantiles == [0.1, 0.5, 0.9] and run.baseline.quantiles == []
    assert "pinball" in run.student.history[-1].parts and "pinball" not in run.baseline.history[-1].parts
    model = load_trained(storage, run, "student").requires_grad_(False)
    assert isinstance(model, QuantileStudent) and model.widen.abs().sum() > 0
    with RunContext(quantile_run.config) as pipe:
        dataset = ingest_step(pipe)
    series = standardized_series(storage, dataset)
    x, y = WindowBatcher(series, 96, 24)(window_starts(dataset.splits["val"], 96, 24))
    _, quantiles = model.quantiles(x)
    assert run.intervals.half_life_windows == 7 * 24  # the default, 7d, of an hourly series
    weight = recency_weights(len(y), run.intervals.half_life_windows)[:, None, None]
    inside = ((quantiles[:, 0] <= y) & (y <= quantiles[:, 2])).double()
    assert float((inside * weight).sum() / (weight.sum() * inside[0].numel())) >= 0.8
    # the test scores recorded are those of the stored weights
    x, y = WindowBatcher(series, 96, 24)(window_starts(dataset.splits["test"], 96, 24))
    _, quantiles = model.quantiles(x)
    inside = float(((quantiles[:, 0] <= y) & (y <= quantiles[:, 2])).double().mean())
    assert inside == pytest.approx(interval.test_coverage, abs=1e-6)
    assert float((quantiles[:, 2] - quantiles[:, 0]).mean()) == pytest.approx(interval.test_width, rel=1e-5)
    # what the run reports and registers
    assert quantile_run.row.intervals == run.intervals
    entry: RegistryEntry = read_version(storage, quantile_run.model)
    assert entry.config.quantiles == [0.1, 0.5, 0.9] and entry.metrics.intervals == run.intervals
    report = (quantile_run.root / "runs" / "smoke").glob("*/report.md")
    assert any("| 24 | 0.1-0.9 | 80% |" in path.read_text() for path in report)
    metrics = json.loads(next((quantile_run.root / "registry" / quantile_run.model).glob("v*/metrics.json"))
                         .read_text())
    assert metrics["intervals"]["intervals"][0]["test_coverage"] == pytest.approx(interval.test_coverage)
    assert np.isfinite(interval.val_coverage_raw)
