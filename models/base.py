"""The contract every forecaster in models/ keeps, and the checks its config runs.

A forecaster takes a standardized window ``x: [B, L, C]`` and returns ``Forecast(prediction [B, S, C],
feature [B, C, feature_dim])``. Its hyperparameters live in a frozen dataclass that derives from
``ForecastConfig``; building the dataclass validates every field, so a bad value fails with the field
named before any weight is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from torch import Tensor, nn


class Forecast(NamedTuple):
    """What a forecaster returns: unpacks like a pair, reads like a record."""

    prediction: Tensor  # [B, S, C] in the same (standardized) space as the input
    feature: Tensor  # [B, C, feature_dim]: one representation per variable, used for distillation


@dataclass(frozen=True, kw_only=True)
class ForecastConfig:
    """The window shape every model is built for; each model's config adds its own fields."""

    lookback: int  # L: input steps
    horizon: int  # S: forecast steps
    n_vars: int  # C: variables (channels)

    def __post_init__(self) -> None:
        check_positive_int(self, "lookback", "horizon", "n_vars")


class Forecaster(nn.Module):
    """Base class: owns the config and the numbers a model reports about itself."""

    config_class: ClassVar[type[ForecastConfig]]  # the frozen dataclass the model is built from
    presets: ClassVar[dict[str, dict]]  # per-dataset hyperparameters (the model file's PRESETS)

    config: ForecastConfig
    feature_dim: int  # width d of the per-variable feature [B, C, d]

    def __init__(self, config: ForecastConfig) -> None:
        super().__init__()
        self.config = config

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


# --- config checks: each raises ValueError naming the config class and the field ---------------------


def _fail(config: object, name: str, requirement: str) -> None:
    value = getattr(config, name)
    raise ValueError(f"{type(config).__name__}.{name} must be {requirement}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not _is_int(value) or value <= 0:
            _fail(config, name, "a positive integer")


def check_non_negative_int(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not _is_int(value) or value < 0:
            _fail(config, name, "a non-negative integer")


def check_probability(config: object, *names: str) -> None:
    """Dropout rates: a number in [0, 1)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
            _fail(config, name, "a number in [0, 1)")


def check_bool(config: object, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(config, name), bool):
            _fail(config, name, "True or False")


def check_choice(config: object, name: str, choices: tuple[str, ...]) -> None:
    if getattr(config, name) not in choices:
        _fail(config, name, f"one of {list(choices)}")


def check_odd(config: object, *names: str) -> None:
    for name in names:
        if getattr(config, name) % 2 != 1:
            _fail(config, name, "odd (a centered kernel keeps the length)")


def check_divisible(config: object, name: str, by: str) -> None:
    value, divisor = getattr(config, name), getattr(config, by)
    if value % divisor != 0:
        _fail(config, name, f"divisible by {by}={divisor}")


def check_at_most(config: object, name: str, bound: str) -> None:
    value, limit = getattr(config, name), getattr(config, bound)
    if value > limit:
        _fail(config, name, f"at most {bound}={limit}")
