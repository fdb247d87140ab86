"""Forecasters (teachers and students) and the TimeDistill loss, in plain PyTorch.

Every model maps a standardized window ``x: [B, L, C]`` to ``Forecast(prediction [B, S, C],
feature [B, C, feature_dim])``, owns its frozen ``config``, and reports ``num_params()``. Build one by
name with ``build_model``; per-dataset defaults come from the model file's ``PRESETS``.

    model = build_model("itransformer", lookback=720, horizon=96, n_vars=7, preset="etth1")
    prediction, feature = model(x)
"""

from __future__ import annotations

from dataclasses import fields

from .base import Forecast, ForecastConfig, Forecaster
from .distill import MultiTeacherLoss, TimeDistillLoss, multiscale_mse, period_kl, reduce_feature_width
from .dlinear import DLinear
from .itransformer import ITransformer
from .lightts import LightTS
from .mlp import MLP
from .moderntcn import ModernTCN
from .patchtst import PatchTST
from .quantiles import QuantileStudent, check_levels, pinball_loss
from .timemixer import TimeMixer
from .tsmixer import TSMixer

MODELS: dict[str, type[Forecaster]] = {
    # teachers
    "itransformer": ITransformer,
    "patchtst": PatchTST,
    "moderntcn": ModernTCN,
    "timemixer": TimeMixer,
    "dlinear": DLinear,
    # students
    "mlp": MLP,
    "tsmixer": TSMixer,
    "lightts": LightTS,
}
TEACHERS: tuple[str, ...] = ("itransformer", "patchtst", "moderntcn", "timemixer", "dlinear")
STUDENTS: tuple[str, ...] = ("mlp", "tsmixer", "lightts")

_WINDOW_FIELDS = ("lookback", "horizon", "n_vars")


def _model_class(name: str) -> type[Forecaster]:
    try:
        return MODELS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown model {name!r}; allowed: {sorted(MODELS)}") from None


def hyperparameters(name: str) -> tuple[str, ...]:
    """The hyperparameter names ``build_model`` accepts for a model (its config fields)."""
    config_class = _model_class(name).config_class
    return tuple(f.name for f in fields(config_class) if f.name not in _WINDOW_FIELDS)


def build_config(
    name: str, *, lookback: int, horizon: int, n_vars: int, preset: str | None = None, **hparams: object
) -> ForecastConfig:
    """The validated config ``build_model`` would use, without allocating the model."""
    model_class = _model_class(name)
    allowed = hyperparameters(name)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for model {name!r}; allowed: {list(allowed)}")
    # An unknown preset name only means "no preset": data sets are open-ended.
    values = {**model_class.presets.get((preset or "").lower(), {}), **hparams}
    return model_class.config_class(lookback=lookback, horizon=horizon, n_vars=n_vars, **values)


def build_model(
    name: str, *, lookback: int, horizon: int, n_vars: int, preset: str | None = None, **hparams: object
) -> Forecaster:
    """Build a registered model; explicit ``hparams`` override the preset's values.

    Raises ValueError for an unknown model name or hyperparameter name (listing the allowed ones) and for
    invalid values (naming the field).
    """
    config = build_config(name, lookback=lookback, horizon=horizon, n_vars=n_vars, preset=preset, **hparams)
    return _model_class(name)(config)


__all__ = [
    "MODELS",
    "STUDENTS",
    "TEACHERS",
    "Forecast",
    "ForecastConfig",
    "Forecaster",
    "MultiTeacherLoss",
    "QuantileStudent",
    "TimeDistillLoss",
    "build_config",
    "build_model",
    "check_levels",
    "hyperparameters",
    "multiscale_mse",
    "period_kl",
    "pinball_loss",
    "reduce_feature_width",
]
