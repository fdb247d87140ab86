"""The baseline of the serving benchmark: the same API and the same model in one bare FastAPI +
uvicorn process, no Ray (forecasts computed in the request handler, one at a time).

    TIMEDISTILL_STORAGE=<root> uvicorn bench.serve_bare:app --port 8100
"""

from __future__ import annotations

import os

import numpy as np

from timedistill.conf import ServeConfig
from timedistill.serving.api import Forecasts, RegistryView, create_api, load_served
from timedistill.store.storage import Storage


class InProcess:
    def __init__(self, storage: Storage) -> None:
        self.storage, self.models = storage, {}

    async def forecast(self, model_id: str, histories: np.ndarray, *, batched: bool) -> Forecasts:
        if model_id not in self.models:
            self.models[model_id] = load_served(self.storage, model_id)
        return Forecasts.of(self.models[model_id], histories)


storage = Storage(os.environ.get("TIMEDISTILL_STORAGE", "./artifacts"))
app = create_api(ServeConfig(), RegistryView(storage, ttl=5.0), InProcess(storage))
