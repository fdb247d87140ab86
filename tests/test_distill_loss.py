"""Tests for models/distill.py against an independent NumPy reference written with explicit loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from timedistill.models.distill import (
    PART_NAMES,
    TimeDistillLoss,
    multiscale_mse,
    period_kl,
    reduce_feature_width,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the reference: plain NumPy, loops, float64 ---------------------------------------------------------


def ref_pool2(x: np.ndarray, axis: int) -> np.ndarray:
    """Average each non-overlapping pair along ``axis``; an odd last element is dropped."""
    pairs = []
    for i in range(x.shape[axis] // 2):
        first = np.take(x, 2 * i, axis=axis)
        second = np.take(x, 2 * i + 1, axis=axis)
        pairs.append((first + second) / 2.0)
    return np.stack(pairs, axis=axis)


def ref_multiscale_mse(a: np.ndarray, b: np.ndarray, axis: int, scales: int) -> float:
    errors = [np.mean((a - b) ** 2)]
    for _ in range(scales):
        if a.shape[axis] < 2:
            break
        a, b = ref_pool2(a, axis), ref_pool2(b, axis)
        errors.append(np.mean((a - b) ** 2))
    return float(sum(errors) / len(errors))


def ref_period_kl(student: np.ndarray, teacher: np.ndarray, axis: int, tau: float) -> float:
    s_amp = np.abs(np.fft.rfft(student, axis=axis))
    t_amp = np.abs(np.fft.rfft(teacher, axis=axis))
    s_rows = np.moveaxis(s_amp, axis, -1).reshape(-1, s_amp.shape[axis])[:, 1:]  # drop frequency 0
    t_rows = np.moveaxis(t_amp, axis, -1).reshape(-1, t_amp.shape[axis])[:, 1:]
    total, count = 0.0, 0
    for s_row, t_row in zip(s_rows, t_rows, strict=True):
        s_exp = [math.exp(v / tau) for v in s_row]
        t_exp = [math.exp(v / tau) for v in t_row]
        s_sum, t_sum = sum(s_exp), sum(t_exp)
        for s_e, t_e in zip(s_exp, t_exp, strict=True):
            p_s, p_t = s_e / s_sum, t_e / t_sum
            total += p_t * (math.log(p_t) - math.log(p_s))
            count += 1
    return total / count


def ref_projection(loss: TimeDistillLoss, h: np.ndarray) -> np.ndarray:
    first, second = loss.projection[0], loss.projection[2]
    w1, b1 = first.weight.detach().double().numpy(), first.bias.detach().double().numpy()
    w2, b2 = second.weight.detach().double().numpy(), second.bias.detach().double().numpy()
    hidden = np.maximum(h @ w1.T + b1, 0.0)
    return hidden @ w2.T + b2


def random_inputs(B=3, S=11, C=4, D=6, d_t=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "student_pred": torch.randn(B, S, C, generator=g, dtype=torch.float64),
        "student_feat": torch.randn(B, C, D, generator=g, dtype=torch.float64),
        "teacher_pred": torch.randn(B, S, C, generator=g, dtype=torch.float64),
        "teacher_feat": torch.randn(B, C, d_t, generator=g, dtype=torch.float64),
        "target": torch.randn(B, S, C, generator=g, dtype=torch.float64),
    }


# --- helpers against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dim", "scales"),
    [((3, 16, 4), 1, 3), ((3, 13, 4), 1, 3), ((2, 5, 9), 2, 3), ((2, 3, 5), 1, 3), ((2, 7, 5), 1, 0)],
)
def test_multiscale_mse_matches_reference(shape, dim, scales):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(*shape, generator=g, dtype=torch.float64)
    b = torch.randn(*shape, generator=g, dtype=torch.float64)
    expected = ref_multiscale_mse(a.numpy(), b.numpy(), dim, scales)
    assert multiscale_mse(a, b, dim=dim, scales=scales).item() == pytest.approx(expected, rel=1e-12)
    assert multiscale_mse(a, b, dim=dim - a.dim(), scales=scales).item() == pytest.approx(expected, rel=1e-12)


def test_multiscale_mse_resolutions_on_odd_and_short_lengths():
    # Length 7 -> 3 -> 1: three resolutions even with scales=3; a constant offset of 1 keeps MSE = 1.
    a = torch.zeros(1, 7, 1)
    assert multiscale_mse(a + 1, a, dim=1, scales=3).item() == pytest.approx(1.0)
    # Only the pooled resolutions see a pattern that averages out: [1, -1] pairs vanish when pooled.
    alternating = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]).reshape(1, 8, 1)
    zeros = torch.zeros_like(alternating)
    assert multiscale_mse(alternating, zeros, dim=1, scales=3).item() == pytest.approx(1.0 / 4)
    assert multiscale_mse(alternating, zeros, dim=1, scales=0).item() == pytest.approx(1.0)
    # Length 1: nothing to pool.
    assert multiscale_mse(torch.ones(2, 1, 3), torch.zeros(2, 1, 3), dim=1, scales=3).item() == 1.0


@pytest.mark.parametrize(("shape", "dim"), [((3, 16, 4), 1), ((3, 13, 4), 1), ((2, 5, 9), 2), ((2, 4, 2), 2)])
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_period_kl_matches_reference(shape, dim, tau):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(*shape, generator=g, dtype=torch.float64)
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    expected = ref_period_kl(s.numpy(), t.numpy(), dim, tau)
    assert period_kl(s, t, dim=dim, tau=tau).item() == pytest.approx(expected, rel=1e-9)


def test_period_kl_ignores_the_mean_and_is_zero_without_frequencies():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, 3, generator=g)
    assert period_kl(x + 5.0, x, dim=1, tau=0.5).item() == pytest.approx(0.0, abs=1e-6)
    assert period_kl(torch.randn(2, 1, 3), torch.randn(2, 1, 3), dim=1, tau=0.5).item() == 0.0


def test_helpers_are_zero_when_student_equals_teacher():
    a = torch.randn(4, 13, 5)
    assert multiscale_mse(a, a.clone(), dim=1, scales=3).item() == 0.0
    assert period_kl(a, a.clone(), dim=1, tau=0.5).item() == pytest.approx(0.0, abs=1e-7)
    assert period_kl(a, a.clone(), dim=2, tau=0.5).item() == pytest.approx(0.0, abs=1e-7)


# --- the full loss ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_reference(seed):
    torch.manual_seed(seed)
    inputs = random_inputs(seed=seed)
    alpha, beta, tau, scales = 0.7, 1.3, 0.5, 3
    loss = TimeDistillLoss(teacher_dim=10, student_dim=6, alpha=alpha, beta=beta, tau=tau, scales=scales).double()
    total, parts = loss(**inputs)

    n = {k: v.numpy() for k, v in inputs.items()}
    projected = ref_projection(loss, n["teacher_feat"])
    expected = {
        "sup": float(np.mean((n["student_pred"] - n["target"]) ** 2)),
        "pred_scale": ref_multiscale_mse(n["student_pred"], n["teacher_pred"], 1, scales),
        "pred_period": ref_period_kl(n["student_pred"], n["teacher_pred"], 1, tau),
        "feat_scale": ref_multiscale_mse(n["student_feat"], projected, 2, scales),
        "feat_period": ref_period_kl(n["student_feat"], projected, 2, tau),
    }
    assert set(parts) == set(PART_NAMES) == set(expected)
    for key, value in expected.items():
        assert parts[key].dim() == 0
        assert parts[key].item() == pytest.approx(value, rel=1e-9), key
    expected_total = (
        expected["sup"]
        + alpha * (expected["pred_period"] + expected["pred_scale"])
        + beta * (expected["feat_period"] + expected["feat_scale"])
    )
    assert total.item() == pytest.approx(expected_total, rel=1e-9)


def test_projection_architecture():
    loss = TimeDistillLoss(teacher_dim=10, student_dim=6, alpha=1.0, beta=1.0)
    first, activation, second = loss.projection
    assert (first.in_features, first.out_features) == (10, 6)
    assert isinstance(activation, torch.nn.ReLU)
    assert (second.in_features, second.out_features) == (6, 6)


def test_zero_distillation_cost_when_student_equals_teacher():
    D = 6
    loss = TimeDistillLoss(teacher_dim=D, student_dim=D, alpha=2.0, beta=2.0)
    with torch.no_grad():  # P = identity on non-negative features
        for layer in (loss.projection[0], loss.projection[2]):
            layer.weight.copy_(torch.eye(D))
            layer.bias.zero_()
    pred = torch.randn(3, 11, 4)
    feat = torch.rand(3, 4, D) + 0.1
    target = torch.randn(3, 11, 4)
    total, parts = loss(pred, feat, pred.clone(), feat.clone(), target)
    for key in ("pred_scale", "pred_period", "feat_scale", "feat_period"):
        assert parts[key].item() == pytest.approx(0.0, abs=1e-6), key
    assert total.item() == pytest.approx(torch.nn.functional.mse_loss(pred, target).item(), rel=1e-5)


def test_gradients_reach_student_and_projection_never_teacher():
    inputs = {k: v.float().requires_grad_(True) for k, v in random_inputs().items()}
    loss = TimeDistillLoss(teacher_dim=10, student_dim=6, alpha=1.0, beta=1.0)
    total, _ = loss(**inputs)
    total.backward()
    assert inputs["student_pred"].grad is not None and inputs["student_pred"].grad.abs().sum() > 0
    assert inputs["student_feat"].grad is not None and inputs["student_feat"].grad.abs().sum() > 0
    assert inputs["teacher_pred"].grad is None
    assert inputs["teacher_feat"].grad is None
    for name, parameter in loss.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_teacher_module_gets_no_gradient_through_the_loss():
    teacher = torch.nn.Linear(8, 10)
    teacher_feat = teacher(torch.randn(3, 4, 8))  # still attached to the teacher's graph
    inputs = random_inputs()
    inputs = {k: v.float() for k, v in inputs.items()}
    inputs["teacher_feat"] = teacher_feat
    inputs["student_feat"].requires_grad_(True)
    total, _ = TimeDistillLoss(teacher_dim=10, student_dim=6, alpha=1.0, beta=1.0)(**inputs)
    total.backward()
    assert teacher.weight.grad is None and teacher.bias.grad is None


def test_alpha_zero_skips_prediction_terms():
    inputs = random_inputs()
    inputs["teacher_pred"] = torch.full_like(inputs["teacher_pred"], float("nan"))  # never read
    loss = TimeDistillLoss(teacher_dim=10, student_dim=6, alpha=0.0, beta=1.0).double()
    total, parts = loss(**inputs)
    assert torch.isfinite(total)
    assert parts["pred_scale"].item() == 0.0 and parts["pred_period"].item() == 0.0
    assert parts["feat_scale"].item() > 0.0


def test_beta_zero_skips_feature_terms_and_the_projection():
    loss = TimeDistillLoss(teacher_dim=10, student_dim=6, alpha=1.0, beta=0.0)
    assert loss.projection is None
    assert sum(p.numel() for p in loss.parameters()) == 0
    inputs = random_inputs()
    inputs["teacher_feat"] = torch.full((3, 4, 999), float("nan"), dtype=torch.float64)  # never read
    total, parts = loss(**inputs)
    assert torch.isfinite(total)
    assert parts["feat_scale"].item() == 0.0 and parts["feat_period"].item() == 0.0
    assert parts["pred_scale"].item() > 0.0


def test_sup_false_drops_the_ground_truth_term():
    inputs = random_inputs()
    with_sup, parts_sup = TimeDistillLoss(10, 6, alpha=0.5, beta=0.0)(**inputs)
    inputs["target"] = torch.full_like(inputs["target"], float("nan"))  # never read
    without, parts = TimeDistillLoss(10, 6, alpha=0.5, beta=0.0, sup=False)(**inputs)
    assert parts["sup"].item() == 0.0
    assert torch.isfinite(without)
    assert without.item() == pytest.approx(with_sup.item() - parts_sup["sup"].item(), rel=1e-9)


@pytest.mark.parametrize(("period", "scale"), [(False, True), (True, False), (False, False)])
def test_period_and_scale_ablations(period, scale):
    inputs = random_inputs()
    loss = TimeDistillLoss(10, 6, alpha=1.0, beta=1.0, period=period, scale=scale).double()
    total, parts = loss(**inputs)
    for level in ("pred", "feat"):
        assert (parts[f"{level}_period"].item() != 0.0) == period
        assert (parts[f"{level}_scale"].item() != 0.0) == scale
    expected = parts["sup"] + sum(parts[k] for k in PART_NAMES if k != "sup")
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    assert (loss.projection is not None) == (period or scale)


def test_parts_are_zero_dim_tensors_of_the_input_dtype():
    _, parts = TimeDistillLoss(10, 6, alpha=0.0, beta=0.0)(**random_inputs())
    assert list(parts) == list(PART_NAMES)
    for value in parts.values():
        assert value.dim() == 0 and value.dtype == torch.float64


def test_float16_teacher_cache_is_accepted():
    inputs = {k: v.float() for k, v in random_inputs().items()}
    loss = TimeDistillLoss(10, 6, alpha=1.0, beta=1.0)
    reference, _ = loss(**inputs)
    half = dict(inputs, teacher_pred=inputs["teacher_pred"].half(), teacher_feat=inputs["teacher_feat"].half())
    total, _ = loss(**half)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(reference.item(), rel=1e-2)


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": -1.0}, {"beta": -0.1}, {"tau": 0.0}, {"scales": -1}, {"teacher_dim": 0}, {"student_dim": 0}],
)
def test_invalid_arguments(kwargs):
    arguments = {"teacher_dim": 10, "student_dim": 6, "alpha": 1.0, "beta": 1.0, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TimeDistillLoss(**arguments)


# --- teacher feature width ------------------------------------------------------------------------------


def test_reduce_feature_width():
    feature = torch.randn(2, 3, 10)
    assert reduce_feature_width(feature, 10) is feature
    assert reduce_feature_width(feature, 64) is feature
    reduced = reduce_feature_width(feature, 4)
    assert reduced.shape == (2, 3, 4)
    # Adaptive average pooling: output j averages inputs floor(j*d/m) .. ceil((j+1)*d/m) - 1.
    for j in range(4):
        start, end = (j * 10) // 4, -((-(j + 1) * 10) // 4)
        torch.testing.assert_close(reduced[..., j], feature[..., start:end].mean(dim=-1))
    assert torch.equal(reduce_feature_width(feature, 4), reduced)
    assert reduce_feature_width(torch.randn(2, 3, 11520), 512).shape == (2, 3, 512)
    with pytest.raises(ValueError, match="max_dim"):
        reduce_feature_width(feature, 0)
    with pytest.raises(ValueError, match="feature"):
        reduce_feature_width(torch.randn(3, 10), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loss_on_cuda_matches_cpu():
    inputs = {k: v.float() for k, v in random_inputs().items()}
    torch.manual_seed(0)
    loss = TimeDistillLoss(10, 6, alpha=1.0, beta=1.0)
    cpu_total, _ = loss(**inputs)
    cuda_total, parts = loss.cuda()(**{k: v.cuda() for k, v in inputs.items()})
    assert all(v.device.type == "cuda" for v in parts.values())
    assert cuda_total.item() == pytest.approx(cpu_total.item(), rel=1e-4)


def test_gradients_stay_finite_when_the_teacher_spectrum_is_peaked():
    """A projected teacher feature with one dominant frequency: its softmax underflows to exact
    zeros. The gradient reaching the projection must stay finite (a probability-space KL gives
    NaN there: d/dp [p log p] at p = 0)."""
    torch.manual_seed(0)
    student = torch.randn(4, 3, 64, requires_grad=True)
    teacher = (1000 * torch.cos(torch.arange(64.0) * 2 * torch.pi * 5 / 64)).expand(4, 3, 64).clone()
    teacher.requires_grad_(True)  # stands in for P(H_t), which trains with the student
    loss = period_kl(student, teacher, dim=2, tau=0.5)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all() and torch.isfinite(teacher.grad).all()


def test_several_teachers_combine_predictions_and_project_each_feature():
    from timedistill.models import MultiTeacherLoss

    torch.manual_seed(0)
    B, S, C, D = 4, 24, 3, 16
    student_pred, student_feat, target = torch.randn(B, S, C), torch.randn(B, C, D), torch.randn(B, S, C)
    preds, feats = [torch.randn(B, S, C), torch.randn(B, S, C)], [torch.randn(B, C, 10), torch.randn(B, C, 12)]
    # one teacher of weight 1 is the paper's loss, term by term
    single = TimeDistillLoss(teacher_dim=10, student_dim=D, alpha=2.0, beta=0.5)
    alone = MultiTeacherLoss([10], D, alpha=2.0, beta=0.5, weights=[1.0])
    alone.features[0].projection.load_state_dict(single.projection.state_dict())
    expected, expected_parts = single(student_pred, student_feat, preds[0], feats[0], target)
    total, parts = alone(student_pred, student_feat, preds[:1], feats[:1], target)
    assert torch.allclose(total, expected) and all(torch.allclose(parts[k], expected_parts[k]) for k in expected_parts)
    # two teachers: the prediction target is their weighted mean, each feature has its own projection
    both = MultiTeacherLoss([10, 12], D, alpha=1.0, beta=0.0, weights=[0.25, 0.75])
    combined = TimeDistillLoss(teacher_dim=10, student_dim=D, alpha=1.0, beta=0.0)
    total, parts = both(student_pred, student_feat, preds, feats, target)
    assert torch.allclose(total, combined(student_pred, student_feat, 0.25 * preds[0] + 0.75 * preds[1], feats[0],
                                          target)[0])
    assert [float(parts[f"teacher_weight_{k}"]) for k in (0, 1)] == [0.25, 0.75]
    projections = MultiTeacherLoss([10, 12], D, alpha=1.0, beta=1.0, weights=[0.5, 0.5]).features
    assert [p.projection[0].in_features for p in projections] == [10, 12]
    # learned weights start equal and get gradients through the combined target
    learned = MultiTeacherLoss([10, 12], D, alpha=1.0, beta=1.0)
    total, parts = learned(student_pred, student_feat, preds, feats, target)
    total.backward()
    assert float(parts["teacher_weight_0"]) == 0.5 and learned.logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sum to 1"):
        MultiTeacherLoss([10, 12], D, alpha=1.0, beta=1.0, weights=[0.5, 0.6])
