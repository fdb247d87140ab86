"""Tests for models/: the shared layers, every registered forecaster, and the build_model contract."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from timedistill.models import MODELS, STUDENTS, TEACHERS, Forecast, build_config, build_model, hyperparameters
from timedistill.models.layers import (
    MovingAverage,
    RevIN,
    SeriesDecomposition,
    depthwise_conv1d_fft,
    instance_norm,
    num_patches,
    patchify,
)
from timedistill.models.moderntcn import ModernTCN

REPO = Path(__file__).resolve().parents[1]

# Tiny sizes so that every model runs in milliseconds on a CPU.
SMALL: dict[str, dict] = {
    "itransformer": {"d_model": 16, "n_heads": 2, "d_ff": 32, "e_layers": 1, "dropout": 0.0},
    "patchtst": {"d_model": 16, "n_heads": 2, "d_ff": 32, "e_layers": 1, "dropout": 0.0},
    "moderntcn": {"d_model": 8, "ffn_ratio": 2, "large_size": 13, "small_size": 3, "dropout": 0.0},
    "timemixer": {"d_model": 8, "d_ff": 16, "e_layers": 1, "dropout": 0.0},
    "dlinear": {},
    "mlp": {"d_model": 32},
    "tsmixer": {"d_ff": 16, "dropout": 0.0},
    "lightts": {"d_model": 32},
}
CHEAP_AT_720 = ("mlp", "dlinear", "lightts", "tsmixer", "itransformer", "timemixer")
DATASET_VARS = {
    "etth1": 7,
    "etth2": 7,
    "ettm1": 7,
    "ettm2": 7,
    "weather": 21,
    "exchange": 8,
    "illness": 7,
    "electricity": 321,
    "traffic": 862,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two threads thrash when the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(name: str, lookback: int, horizon: int, n_vars: int, **overrides: object) -> torch.nn.Module:
    return build_model(name, lookback=lookback, horizon=horizon, n_vars=n_vars, **{**SMALL[name], **overrides})


# --- registry -----------------------------------------------------------------------------------------


def test_registry_names():
    assert set(TEACHERS) >= {"itransformer", "patchtst", "moderntcn", "timemixer", "dlinear"}
    assert set(STUDENTS) >= {"mlp", "tsmixer", "lightts"}
    assert set(MODELS) == set(TEACHERS) | set(STUDENTS)
    assert set(SMALL) == set(MODELS)


# --- shapes and the forward contract ------------------------------------------------------------------

SHAPE_CASES = [(name, (96, 24, 3)) for name in MODELS]
SHAPE_CASES += [(name, (97, 13, 5)) for name in MODELS]
SHAPE_CASES += [(name, (720, 96, 7)) for name in CHEAP_AT_720]


@pytest.mark.parametrize(("name", "shape"), SHAPE_CASES, ids=lambda v: str(v))
def test_forward_shapes(name, shape):
    L, S, C = shape
    torch.manual_seed(0)
    model = small_model(name, L, S, C)
    out = model(torch.randn(4, L, C))
    assert isinstance(out, Forecast)
    prediction, feature = out
    assert prediction.shape == (4, S, C)
    assert feature.shape == (4, C, model.feature_dim)
    assert isinstance(model.feature_dim, int)
    assert torch.isfinite(prediction).all() and torch.isfinite(feature).all()
    model.eval()
    with torch.inference_mode():
        prediction, feature = model(torch.randn(1, L, C))
    assert prediction.shape == (1, S, C) and feature.shape == (1, C, model.feature_dim)


def test_feature_dim_formulas():
    L, S, C = 97, 13, 5
    expected = {
        "itransformer": SMALL["itransformer"]["d_model"],
        "patchtst": SMALL["patchtst"]["d_model"] * ((L + 8 - 16) // 8 + 1),
        "moderntcn": SMALL["moderntcn"]["d_model"] * (L // 4),
        "timemixer": S * SMALL["timemixer"]["d_model"],
        "dlinear": 2 * S,
        "mlp": SMALL["mlp"]["d_model"],
        "tsmixer": L,
        "lightts": 2 * (SMALL["lightts"]["d_model"] // 4),
    }
    for name, dim in expected.items():
        assert small_model(name, L, S, C).feature_dim == dim, name


def test_mlp_parameter_count():
    model = build_model("mlp", lookback=720, horizon=96, n_vars=7)
    assert model.num_params() == 836_828
    assert model.feature_dim == 512
    # RevIN adds one learnable weight and bias per variable.
    assert build_model("mlp", lookback=720, horizon=96, n_vars=7, norm="revin").num_params() == 836_828 + 14


@pytest.mark.parametrize("name", list(MODELS))
def test_num_params_counts_trainable_parameters(name):
    model = small_model(name, 48, 12, 2)
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    next(model.parameters()).requires_grad_(False)
    assert model.num_params() < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_config_is_the_frozen_dataclass(name):
    model = build_model(name, lookback=96, horizon=24, n_vars=3, preset="etth1")
    assert dataclasses.is_dataclass(model.config)
    assert (model.config.lookback, model.config.horizon, model.config.n_vars) == (96, 24, 3)
    assert isinstance(model.config, type(model).config_class)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.lookback = 1


# --- build_model errors ---------------------------------------------------------------------------------


def test_unknown_model_name_lists_allowed_names():
    with pytest.raises(ValueError, match="unknown model") as info:
        build_model("transformer9000", lookback=96, horizon=24, n_vars=3)
    for name in MODELS:
        assert name in str(info.value)


def test_unknown_hyperparameter_lists_allowed_ones():
    with pytest.raises(ValueError, match="d_modle") as info:
        build_model("itransformer", lookback=96, horizon=24, n_vars=3, d_modle=64)
    for field in ("d_model", "n_heads", "e_layers", "d_ff", "dropout"):
        assert field in str(info.value)


@pytest.mark.parametrize(
    ("name", "hparams", "field"),
    [
        ("mlp", {"d_model": 0}, "d_model"),
        ("mlp", {"norm": "batch"}, "norm"),
        ("mlp", {"moving_avg": 2.5}, "moving_avg"),
        ("itransformer", {"d_model": 30, "n_heads": 4}, "d_model"),
        ("itransformer", {"use_norm": "yes"}, "use_norm"),
        ("itransformer", {"activation": "tanh"}, "activation"),
        ("patchtst", {"patch_len": 200}, "patch_len"),
        ("patchtst", {"dropout": -0.1}, "dropout"),
        ("moderntcn", {"large_size": 50}, "large_size"),
        ("moderntcn", {"small_size": 61}, "small_size"),
        ("moderntcn", {"patch_stride": 16}, "patch_stride"),
        ("moderntcn", {"patch_size": 128}, "patch_size"),
        ("timemixer", {"down_sampling_layers": 10}, "down_sampling_layers"),
        ("timemixer", {"down_sampling_window": 1}, "down_sampling_window"),
        ("dlinear", {"moving_avg": -1}, "moving_avg"),
        ("tsmixer", {"dropout": 1.5}, "dropout"),
        ("tsmixer", {"norm_type": "group"}, "norm_type"),
        ("lightts", {"d_model": 8}, "d_model"),
        ("lightts", {"norm": "std"}, "norm"),
    ],
)
def test_invalid_values_name_the_field(name, hparams, field):
    with pytest.raises(ValueError, match=field):
        build_model(name, lookback=96, horizon=24, n_vars=3, **hparams)


@pytest.mark.parametrize("field", ["lookback", "horizon", "n_vars"])
def test_invalid_window_sizes(field):
    sizes = {"lookback": 96, "horizon": 24, "n_vars": 3, field: 0}
    with pytest.raises(ValueError, match=field):
        build_model("mlp", **sizes)


# --- presets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_every_preset_is_valid(name):
    presets = MODELS[name].presets
    assert set(presets) <= set(DATASET_VARS)
    for dataset, values in presets.items():
        assert set(values) <= set(hyperparameters(name)), (name, dataset)
        config = build_config(name, lookback=720, horizon=96, n_vars=DATASET_VARS[dataset], preset=dataset)
        for key, value in values.items():
            assert getattr(config, key) == value


def test_preset_applies_and_explicit_hparams_override_it():
    model = build_model("itransformer", lookback=96, horizon=24, n_vars=7, preset="etth1")
    assert (model.config.e_layers, model.config.d_model, model.config.d_ff) == (2, 256, 256)
    model = build_model("itransformer", lookback=96, horizon=24, n_vars=7, preset="ETTh1", d_model=64, n_heads=4)
    assert (model.config.d_model, model.config.n_heads, model.config.d_ff) == (64, 4, 256)
    config = build_config("patchtst", lookback=96, horizon=24, n_vars=7, preset="illness", stride=4)
    assert (config.patch_len, config.stride, config.d_model) == (24, 4, 16)


def test_unknown_preset_means_no_preset():
    default = build_config("itransformer", lookback=96, horizon=24, n_vars=3)
    assert build_config("itransformer", lookback=96, horizon=24, n_vars=3, preset="my-new-dataset") == default
    assert build_config("itransformer", lookback=96, horizon=24, n_vars=3, preset=None) == default


def test_itransformer_defaults_follow_time_series_library():
    config = build_config("itransformer", lookback=96, horizon=24, n_vars=3)
    assert (config.d_model, config.n_heads, config.e_layers, config.d_ff, config.dropout) == (512, 8, 2, 2048, 0.1)


# --- determinism ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_same_weights_and_outputs(name):
    x = torch.randn(4, 97, 3)
    results = []
    for _ in range(2):
        torch.manual_seed(2021)
        model = small_model(name, 97, 13, 3)
        results.append((model.state_dict(), model(x), model.eval()(x)))
    (state_a, train_a, eval_a), (state_b, train_b, eval_b) = results
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for a, b in zip(train_a + eval_a, train_b + eval_b, strict=True):
        assert torch.equal(a, b)


# --- learning: every model fits a small periodic data set ----------------------------------------------


def periodic_windows(lookback: int = 48, horizon: int = 12, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of a 2-variable sum of sines: x [n, L, 2], y [n, S, 2]."""
    t = torch.arange(3 * n + lookback + horizon, dtype=torch.float32)
    series = torch.stack(
        [
            torch.sin(2 * math.pi * t / 24) + 0.5 * torch.sin(2 * math.pi * t / 8),
            torch.cos(2 * math.pi * t / 12) + 0.3 * torch.sin(2 * math.pi * t / 6) + 0.01 * t,
        ],
        dim=-1,
    )  # [T, 2]
    windows = torch.stack([series[3 * i : 3 * i + lookback + horizon] for i in range(n)])
    return windows[:, :lookback], windows[:, lookback:]


OVERFIT_LR = {"itransformer": 3e-3, "patchtst": 3e-3, "timemixer": 3e-3}


@pytest.mark.parametrize("name", list(MODELS))
def test_overfits_a_periodic_series(name):
    torch.manual_seed(0)
    x, y = periodic_windows()
    model = small_model(name, 48, 12, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=OVERFIT_LR.get(name, 1e-2))
    losses = []
    for step in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).prediction, y)
        loss.backward()
        if step == 0:  # every parameter takes part in the forecast
            unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not unused, unused
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] * 20 <= losses[0], losses[:: len(losses) // 6]


# --- shared layers --------------------------------------------------------------------------------------


def test_revin_round_trip_and_statistics():
    torch.manual_seed(0)
    x = 3 * torch.randn(5, 40, 4) + 7
    norm = RevIN(4, scale=True, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    z, stats = norm(x)
    raw = (z - norm.bias) / norm.weight
    torch.testing.assert_close(raw.mean(dim=1), torch.zeros(5, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(raw.std(dim=1, correction=0), torch.ones(5, 4), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.inverse(z, stats), x, atol=1e-4, rtol=1e-5)

    centered, stats = RevIN(4, scale=False)(x)
    assert stats.std is None
    torch.testing.assert_close(centered, x - x.mean(dim=1, keepdim=True))
    assert instance_norm("none", 4) is None
    assert sum(p.numel() for p in instance_norm("mean", 4).parameters()) == 0
    assert sum(p.numel() for p in instance_norm("revin", 4).parameters()) == 8


def test_moving_average_matches_a_hand_computed_one():
    x = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0]).reshape(1, 5, 1)
    out = MovingAverage(3)(x).flatten().tolist()
    padded = [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 16.0]
    assert out == pytest.approx([sum(padded[i : i + 3]) / 3 for i in range(5)])
    series = torch.randn(2, 13, 3, dtype=torch.float64)
    for kernel in (1, 2, 4, 5, 25):
        out = MovingAverage(kernel)(series)
        assert out.shape == (2, 13, 3)
        left, right = (kernel - 1) // 2, kernel // 2
        for t in range(13):  # edge-replicated window around t
            window = [series[:, min(max(t + j, 0), 12)] for j in range(-left, right + 1)]
            torch.testing.assert_close(out[:, t], sum(window) / kernel)
    constant = torch.full((2, 30, 3), 5.0)
    torch.testing.assert_close(MovingAverage(25)(constant), constant)
    seasonal, trend = SeriesDecomposition(25)(x)
    torch.testing.assert_close(seasonal + trend, x)


def test_patchify():
    x = torch.arange(20.0).reshape(1, 1, 20)
    patches = patchify(x, patch_len=8, stride=4)
    assert patches.shape == (1, 1, num_patches(20, 8, 4), 8) == (1, 1, 5, 8)
    assert patches[0, 0, 1].tolist() == list(range(4, 12))
    assert patches[0, 0, -1].tolist() == [16, 17, 18, 19, 19, 19, 19, 19]  # end replicated
    assert num_patches(720, 16, 8) == 90


@pytest.mark.parametrize("length, sizes", [(180, (51, 5)), (7, (13, 3)), (32, (1,))])
def test_depthwise_conv1d_fft_matches_direct_conv(length, sizes):
    torch.manual_seed(0)
    x = torch.randn(3, 6, length, dtype=torch.float64, requires_grad=True)
    kernels = [torch.randn(6, 1, size, dtype=torch.float64, requires_grad=True) for size in sizes]
    outputs = depthwise_conv1d_fft(x, *kernels)
    expected = [torch.nn.functional.conv1d(x, k, padding=k.shape[-1] // 2, groups=6) for k in kernels]
    for out, ref in zip(outputs, expected, strict=True):
        assert out.shape == ref.shape == (3, 6, length)
        torch.testing.assert_close(out, ref)
    # Gradients too: training runs through this path.
    grads = torch.autograd.grad(sum(o.square().sum() for o in outputs), [x, *kernels])
    ref_grads = torch.autograd.grad(sum(r.square().sum() for r in expected), [x, *kernels])
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad)


def test_depthwise_conv1d_fft_takes_bfloat16():
    """GPU training runs under bfloat16 autocast and torch.fft has no bfloat16 kernels: the FFT route
    computes in float32 and hands back the input's dtype."""
    torch.manual_seed(0)
    x, kernel = torch.randn(2, 4, 40), torch.randn(4, 1, 7)
    (out,) = depthwise_conv1d_fft(x.bfloat16(), kernel.bfloat16())
    assert out.dtype == torch.bfloat16
    expected = torch.nn.functional.conv1d(x.bfloat16().float(), kernel.bfloat16().float(), padding=3, groups=4)
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)


def test_moderntcn_structural_reparam_keeps_outputs():
    torch.manual_seed(0)
    model: ModernTCN = small_model("moderntcn", 96, 24, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):  # move the BatchNorm statistics and affine parameters away from their init
        optimizer.zero_grad()
        model(torch.randn(8, 96, 3)).prediction.square().mean().backward()
        optimizer.step()
    model.eval()
    x = torch.randn(4, 96, 3)
    with torch.no_grad():
        before = model(x)
        model.structural_reparam()
        after = model(x)
    assert not any(".large." in key or ".small." in key for key in model.state_dict())
    torch.testing.assert_close(after.prediction, before.prediction, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after.feature, before.feature, atol=1e-4, rtol=1e-4)


# --- packaging and devices ------------------------------------------------------------------------------


def test_models_imports_no_pipeline_packages():
    code = (
        "import sys, timedistill.models, timedistill.models.distill; "
        "print(','.join(m for m in ('ray', 'prefect', 'polars', 'pyarrow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(MODELS))
def test_runs_on_cuda(name):
    torch.manual_seed(0)
    model = small_model(name, 97, 13, 3).cuda()
    x = torch.randn(4, 97, 3, device="cuda")
    prediction, feature = model(x)
    assert prediction.device.type == feature.device.type == "cuda"
    prediction.square().mean().backward()
    model.eval()
    cpu = model.cpu()(x.cpu()).prediction
    torch.testing.assert_close(model.cuda()(x).prediction.cpu(), cpu, atol=1e-4, rtol=1e-4)
