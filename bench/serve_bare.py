"""The baseline of the serving benchmark: the same API and the same model in one bare FastAPI +
uvicorn process, no Ray (forecasts computed in the request handler, one at a time).

    TIMEDISTILL_STORAGE=<root> uvicorn bench.serve_bare:app --port 8100
"""

from __future__ import annotations

import os

import numpy as np

from timedistill.conf import ServeConfig
from timedistill.serving.api import create_api
from timedistill.serving.backend import Forecasts
from timedistill.serving.registry_view import ModelRef, RegistryView, load_served
from timedistill.store.forecaster import ForecastModel
from timedistill.store.storage import Storage


class InProcess:
    """Each version loaded by reference on its first request, and kept."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.models: dict[ModelRef, ForecastModel] = {}

    async def forecast(self, ref: ModelRef, histories: np.ndarray, *, batched: bool) -> Forecasts:
        if ref not in self.models:
            self.models[ref] = load_served(self.storage, ref)
        return Forecasts.of(self.models[ref], histories)


storage = Storage(os.environ.get("TIMEDISTILL_STORAGE", "./artifacts"))
app = create_api(ServeConfig(), RegistryView(storage, ttl=5.0), InProcess(storage))
