"""The Ray Serve application: an HTTP ingress (serving/api.py) in front of a shared pool of model
replicas.

- Many models, little memory: every registered model is served by the same pool; a replica
  loads a model on first use and evicts the least recently used one (`@serve.multiplexed`).
- No hop for the models in use: each ingress replica answers the few models requested most
  recently itself (`serve.ingress_models`); the pool answers the rest.
- Request batching per model: the ingress gathers single-history requests (`@serve.batch`) and
  sends the pool one call per model in the batch, so a burst of requests costs one pool call and
  one forward pass, not one of each per request.
- New versions without downtime: a request for a model's LATEST is routed to name@vK (a
  `ModelRef`); when a retrain registers vK+1, the ingress sees it within `serve.reload_interval_s`
  (or at once via POST /v1/reload) and new requests go to name@vK+1, which the pool loads beside
  vK. Requests already routed to vK finish on vK, so none fails during the switch.
- Overload answers 503 (bounded queues) instead of queueing forever, and so does a request lost
  with a pool replica (killed, its node lost): the client sends it again.
- What answers HTTP in front of the ingress is a setting of the Ray cluster (serving/ingress.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from timedistill.conf import Config, ServeConfig, load_config, storage_root
from timedistill.serving.api import create_api
from timedistill.serving.backend import Forecasts, ReplicaLost
from timedistill.serving.registry_view import ModelRef, RegistryView, load_served
from timedistill.store.errors import ModelUnavailable
from timedistill.store.forecaster import ForecastModel
from timedistill.store.storage import Storage

APP_NAME = "timedistill"
LOOPBACK = "127.0.0.1"
logger = logging.getLogger("ray.serve")


def keep_replica_grpc_on_loopback() -> None:
    """On a node whose address is loopback (the local Ray of `timedistill serve`), bind this
    replica's inter-deployment gRPC server to loopback too.

    Ray Serve 2.60 starts that server on [::], every interface, whatever the node's address
    (ray/serve/_private/replica.py, `_on_initialized`), and calls it through the node's address.
    It does so after the deployment's __init__ has run, looking the helper up in its module,
    so a replica that calls this in __init__ listens where its callers reach it and nowhere else.
    On a cluster node (an address other than loopback) nothing changes."""
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if ray.util.get_node_ip_address() != LOOPBACK or getattr(bind, "on_loopback", False):
        return

    def on_loopback(server: Any, address: str) -> int:
        return bind(server, address.replace("[::]", LOOPBACK, 1))

    on_loopback.on_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_loopback


def model_pool(settings: ServeConfig) -> Any:
    """The pool deployment, built for the configured number of models per replica (a value the
    multiplexing decorator takes at class-definition time)."""

    @serve.deployment(name="ModelPool")
    class ModelPool:
        def __init__(self, root: str, endpoint_override: str | None) -> None:
            keep_replica_grpc_on_loopback()
            self.storage = Storage(root, endpoint_override)

        @serve.multiplexed(max_num_models_per_replica=settings.max_models_per_replica)
        async def get_model(self, model_id: str) -> ForecastModel:
            return load_served(self.storage, ModelRef.parse(model_id))  # the `ModelRef.id` the ingress routed by

        async def forecast(self, histories: np.ndarray) -> Forecasts:
            """[N, L, C] -> the point [N, S, C] (and a quantile model's quantiles) in one forward pass."""
            model = await self.get_model(serve.get_multiplexed_model_id())
            return Forecasts.of(model, histories)

    return ModelPool


def nothing_verified(ref: ModelRef) -> ForecastModel | None:
    return None


class ResidentModels:
    """The models an ingress replica answers itself: the `capacity` most recently requested ones.

    A request for one of them costs no hop to the pool (a Ray call there and back, and each side's
    serialization: more than the student's own forward pass, BENCHMARKS.md "Serving defaults").
    A request for another version takes the model the ingress's verification loaded, when it
    kept it (`verified`, RegistryView.take_model), and is answered here; otherwise it goes to the
    pool as before and starts loading that version here in the background, so the next one stays
    here. The least recently requested is dropped beyond `capacity`. Capacity 0 sends everything
    to the pool. A `ModelRef` names a version's files, so one that did not load is not tried
    again until its files change."""

    def __init__(self, storage: Storage, capacity: int,
                 verified: Callable[[ModelRef], ForecastModel | None] = nothing_verified) -> None:
        self.storage, self.capacity, self.verified = storage, capacity, verified
        self.models: OrderedDict[ModelRef, ForecastModel] = OrderedDict()
        self.loading: set[ModelRef] = set()
        self.failed: set[ModelRef] = set()

    def get(self, ref: ModelRef) -> ForecastModel | None:
        """The model when it is here (or verification kept it); otherwise None, and it starts
        loading (inside an event loop)."""
        model = self.models.get(ref)
        if model is not None:
            self.models.move_to_end(ref)
            return model
        model = self.verified(ref)  # handed over once: the registry view holds it no longer
        if not self.capacity:
            return None
        if model is not None:
            self.keep(ref, model)
        elif ref not in self.loading and ref not in self.failed:
            self.loading.add(ref)
            asyncio.get_running_loop().create_task(self.load(ref))
        return model

    async def load(self, ref: ModelRef) -> None:
        try:
            model = await asyncio.to_thread(load_served, self.storage, ref)
        except Exception as exc:  # the pool answers this model's requests, and reports its error
            logger.warning("model %s stays with the pool: it did not load in the ingress (%s)", ref, exc)
            self.failed.add(ref)
            return
        finally:
            self.loading.discard(ref)
        self.keep(ref, model)

    def keep(self, ref: ModelRef, model: ForecastModel) -> None:
        self.models[ref] = model
        while len(self.models) > self.capacity:
            self.models.popitem(last=False)


@serve.deployment(name="ForecastAPI")
@serve.ingress()
class ForecastAPI:
    """The HTTP ingress: validates requests against the registry, then answers them with the
    models it holds (ResidentModels) or calls the pool."""

    def __init__(self, pool: DeploymentHandle, root: str, endpoint_override: str | None,
                 settings: dict[str, Any]) -> None:
        keep_replica_grpc_on_loopback()
        self.pool = pool
        self.settings = ServeConfig(**settings)
        storage = Storage(root, endpoint_override)
        capacity = self.settings.ingress_models
        self.registry = RegistryView(storage, ttl=self.settings.reload_interval_s, keep_models=capacity)
        self.resident = ResidentModels(storage, capacity, verified=self.registry.take_model)
        # serve.batch adds the setters to the method; its annotation does not say so
        self.gathered.set_max_batch_size(self.settings.max_batch_size)  # type: ignore[attr-defined]
        self.waiting = 0  # single histories of this replica not yet answered

    def __serve_build_asgi_app__(self) -> Any:
        return create_api(self.settings, self.registry, self)

    async def forecast(self, ref: ModelRef, histories: np.ndarray, *, batched: bool) -> Forecasts:
        if batched:  # a client's own batch is answered as it is
            return await self.answer(ref, histories)
        # a batch waits up to serve.batch_wait_timeout_s for company only when there is some: a
        # lone request goes at once (Ray Serve reads the wait when a batch's first request arrives)
        self.waiting += 1
        wait_s = self.settings.batch_wait_timeout_s if self.waiting > 1 else 0.0
        self.gathered.set_batch_wait_timeout_s(wait_s)  # type: ignore[attr-defined]
        try:
            result = await self.gathered((ref, histories[0]))
        finally:
            self.waiting -= 1
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch  # sized from the config in __init__
    async def gathered(self, requests: list[tuple[ModelRef, np.ndarray]]) -> list[Forecasts | BaseException]:
        """Single histories of any models, (version, [L, C]) each -> the answer to that history
        alone (N = 1) each, or the error of that request's model (one model failing to load must
        not fail the others)."""
        by_model: dict[ModelRef, list[np.ndarray]] = {}
        slots = []  # each request's version and row in that version's call
        for ref, history in requests:
            group = by_model.setdefault(ref, [])
            slots.append((ref, len(group)))
            group.append(history)
        calls = [self.answer(m, np.stack(h)) for m, h in by_model.items()]  # [n, L, C] each
        outcomes = dict(zip(by_model, await asyncio.gather(*calls, return_exceptions=True), strict=True))
        return [o if isinstance(o := outcomes[m], BaseException) else o.row(row) for m, row in slots]

    async def answer(self, ref: ModelRef, histories: np.ndarray) -> Forecasts:
        """[N, L, C] -> Forecasts, here when the model is resident, else from the pool. What the
        pool raises comes back wrapped by Ray (RayTaskError, whose `cause` is the original): a
        model that does not load is its ModelUnavailable again; a replica that died with the
        request (ActorDiedError, or ActorUnavailableError over gRPC) is ReplicaLost."""
        model = self.resident.get(ref)
        if model is not None:
            return Forecasts.of(model, histories)
        try:
            return await self.pool.options(multiplexed_model_id=ref.id).forecast.remote(histories)
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ModelUnavailable):  # its message, without Ray's traceback
                raise ModelUnavailable(str(cause)) from None
            if isinstance(exc, RayActorError) or isinstance(cause, RayActorError):
                raise ReplicaLost(f"the model replica answering model {ref} stopped before it answered") from None
            raise


def http_options(settings: ServeConfig) -> dict[str, Any]:
    """What `serve.start` takes: where to listen, and how long a request may take."""
    return {"host": settings.host, "port": settings.port, "request_timeout_s": settings.request_timeout_s}


def replicas_at_least(settings: ServeConfig) -> int:
    """`serve.min_replicas`, else two replicas of each deployment where the Ray cluster has the
    CPUs for them, else one. With two, losing a replica costs the requests in flight on it; with
    one, every request waits until Ray has started its replacement (docs/operations.md, "Faults")."""
    if settings.min_replicas is not None:
        return settings.min_replicas
    cpus = ray.cluster_resources().get("CPU", 0.0) if ray.is_initialized() else 0.0
    deployments = 2  # the ingress and the model pool
    return min(2 if cpus >= 2 * deployments * settings.num_cpus else 1, settings.max_replicas)


def deployment_options(settings: ServeConfig) -> dict[str, Any]:
    return {
        "ray_actor_options": {"num_cpus": settings.num_cpus},
        "logging_config": {"enable_access_log": settings.access_log},
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=1),
        # a stopping replica checks for requests still in flight this often (Ray's default: 2 s,
        # paid once per deployment at every shutdown and downscale)
        "graceful_shutdown_wait_loop_s": 0.25,
        "autoscaling_config": {"min_replicas": replicas_at_least(settings), "max_replicas": settings.max_replicas,
                               "target_ongoing_requests": max(settings.max_batch_size // 2, 1)},
    }


def build_app(config: Config) -> Any:
    """The application for `serve.run`, reading the registry under the config's storage root."""
    settings, root = config.serve, storage_root(config)
    pool = model_pool(settings).options(**deployment_options(settings)).bind(root, config.storage.endpoint_override)
    # serve.deployment turns the class into a Deployment; mypy still sees the class
    return ForecastAPI.options(**deployment_options(settings)).bind(  # type: ignore[attr-defined]
        pool, root, config.storage.endpoint_override, settings.model_dump())


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve run` / `serve deploy` with infra/serve.yaml: `args` holds `config` (a path or a
    shipped name) and optional `overrides` (a list of dotted.key=value)."""
    return build_app(load_config(args.get("config"), list(args.get("overrides", []))))
