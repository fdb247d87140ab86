"""The Ray Serve application: an HTTP ingress (serving/api.py) in front of a shared pool of model
replicas.

- Many models, little memory: every registered model is served by the same pool; a replica
  loads a model on first use and evicts the least recently used one (`@serve.multiplexed`).
- Request batching per model (`@serve.batch`; Serve splits batches by multiplexed model id).
- New versions without downtime: a request for a model's LATEST is routed to "name@vK"; when a
  retrain registers vK+1, the ingress sees it within `serve.reload_interval_s` (or at once via
  POST /v1/reload) and new requests go to "name@vK+1", which the pool loads beside vK. Requests
  already routed to vK finish on vK, so none fails during the switch.
- Overload answers 503 (bounded queues) instead of queueing forever.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from conf import Config, ServeConfig, load_config, storage_root
from serving.api import RegistryView, create_api
from serving.forecaster import ForecastModel
from tasks.storage import Storage

APP_NAME = "timedistill"


def model_pool(settings: ServeConfig) -> Any:
    """The pool deployment, built for the configured number of models per replica (a value the
    multiplexing decorator takes at class-definition time)."""

    @serve.deployment(name="ModelPool")
    class ModelPool:
        def __init__(self, root: str, endpoint_override: str | None, max_batch_size: int, wait_s: float) -> None:
            self.storage = Storage(root, endpoint_override)
            self.forecast_one.set_max_batch_size(max_batch_size)
            self.forecast_one.set_batch_wait_timeout_s(wait_s)

        @serve.multiplexed(max_num_models_per_replica=settings.max_models_per_replica)
        async def get_model(self, model_id: str) -> ForecastModel:
            name, version = model_id.split("@", 1)  # built by the ingress from a validated entry
            return ForecastModel.from_registry(self.storage, name, version)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def forecast_one(self, histories: list[np.ndarray]) -> list[np.ndarray]:
            """Single-history requests of one model, batched: [L, C] each -> [S, C] each."""
            model = await self.get_model(serve.get_multiplexed_model_id())
            return list(model.forecast(np.stack(histories)))

        async def forecast_many(self, histories: np.ndarray) -> np.ndarray:
            """A client's own batch: [N, L, C] -> [N, S, C] in one forward pass."""
            model = await self.get_model(serve.get_multiplexed_model_id())
            return model.forecast(histories)

    return ModelPool


@serve.deployment(name="ForecastAPI")
@serve.ingress()
class ForecastAPI:
    """The HTTP ingress: validates requests against the registry, then calls the pool."""

    def __init__(self, pool: DeploymentHandle, root: str, endpoint_override: str | None,
                 settings: dict[str, Any]) -> None:
        self.pool = pool
        self.settings = ServeConfig(**settings)
        self.registry = RegistryView(Storage(root, endpoint_override), ttl=self.settings.reload_interval_s)

    def __serve_build_asgi_app__(self) -> Any:
        return create_api(self.settings, self.registry, self)

    async def forecast(self, model_id: str, histories: np.ndarray, *, batched: bool) -> np.ndarray:
        handle = self.pool.options(multiplexed_model_id=model_id)
        if batched:
            return await handle.forecast_many.remote(histories)
        return (await handle.forecast_one.remote(histories[0]))[None]


def deployment_options(settings: ServeConfig) -> dict[str, Any]:
    return {
        "ray_actor_options": {"num_cpus": settings.num_cpus},
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=1),
        "autoscaling_config": {"min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
                               "target_ongoing_requests": max(settings.max_batch_size // 2, 1)},
    }


def build_app(config: Config) -> Any:
    """The application for `serve.run`, reading the registry under the config's storage root."""
    settings, root = config.serve, storage_root(config)
    pool = model_pool(settings).options(**deployment_options(settings)).bind(
        root, config.storage.endpoint_override, settings.max_batch_size, settings.batch_wait_timeout_s)
    return ForecastAPI.options(**deployment_options(settings)).bind(
        pool, root, config.storage.endpoint_override, settings.model_dump())


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve run` / `serve deploy` with infra/serve.yaml: `args` holds `config` (a path or a
    shipped name) and optional `overrides` (a list of dotted.key=value)."""
    return build_app(load_config(args.get("config"), list(args.get("overrides", []))))
