"""Where forecasts are computed, as the routes see it: a `Backend` answers histories with a
verified version (`ModelRef`). Ray Serve's ingress (serving/app.py) is one; the bare benchmark
server's in-process model (bench/serve_bare.py) is the other."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from timedistill.serving.registry_view import ModelRef
from timedistill.store.forecaster import ForecastModel


class Forecasts(NamedTuple):
    """A model's answer to N histories, in data units. The quantiles come from the same forward
    pass as the point, so that a quantile model costs the server no second call."""

    point: np.ndarray  # [N, S, C]
    quantiles: np.ndarray | None  # [N, Q, S, C] at the model's levels; None for a point model

    @classmethod
    def of(cls, model: ForecastModel, histories: np.ndarray) -> Forecasts:
        if model.levels:
            return cls(*model.forecast_quantiles(histories))
        return cls(model.forecast(histories), None)

    def row(self, index: int) -> Forecasts:
        """History `index` alone, as an answer to one history (N = 1)."""
        keep = slice(index, index + 1)
        return Forecasts(self.point[keep], None if self.quantiles is None else self.quantiles[keep])

    def finite(self) -> bool:
        return all(np.isfinite(part).all() for part in self if part is not None)


class Backend(Protocol):
    """[N, L, C] in data units -> `Forecasts` of the version `ref` names (`load_served` loads it).
    A model whose files no longer load raises ModelUnavailable; a request lost with the replica
    that held it raises ReplicaLost."""

    async def forecast(self, ref: ModelRef, histories: np.ndarray, *, batched: bool) -> Forecasts: ...


class ReplicaLost(Exception):
    """The replica computing a forecast stopped before it answered (killed, its node lost): the
    request did nothing and may be sent again."""
