"""The HTTP API (FastAPI), independent of where the model runs: Ray Serve's ingress wraps it
around a handle to the model pool; the bare benchmark server wraps it around an in-process model.

    GET  /healthz                    liveness
    GET  /readyz                     ready when every registered model has a version that serves
    GET  /v1/models                  registered models: version, lookback, horizon, variables, metrics,
                                     quantile levels
    POST /v1/forecast                {"model", "history", "version"?} -> one forecast (and its quantiles,
                                     {"0.1": [S][C], ...}, for a model that has them); a history is
                                     [[C] x L] in the model's order, or columns named as its variables
    POST /v1/forecast/batch          {"model", "histories": [[[C] x L] x N]} -> N forecasts (and quantiles)
    POST /v1/forecast/npy?model=...  body: .npy of [L, C] or [N, L, C] -> .npy of [S, C] / [N, S, C], the point
    POST /v1/reload                  look for new LATEST versions now

Bad input is a 4xx that says what is wrong, never a 500: a malformed body, the wrong number of
rows or columns, NaN or infinity, an unknown model or version, a name that is not a plain
registry name, a body over the size limit, dates whose forecast would end beyond the year 9999.
A model that cannot answer (a broken registry entry, a replica lost with the request) is a 503
with Retry-After.

The routes only join the rooms that do the work: what may be served (serving/registry_view.py),
histories in (serving/requests.py), what every request passes first (serving/middleware.py) and
where forecasts are computed (serving/backend.py).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from timedistill.conf import ServeConfig
from timedistill.serving.backend import Backend, Forecasts, ReplicaLost
from timedistill.serving.middleware import BodyLimit, bearer_token, invalid_request
from timedistill.serving.registry_view import RegistryView, Served
from timedistill.serving.requests import batch_histories, npy_histories, parse_json, single_history
from timedistill.serving.schema import (
    BatchForecastRequest,
    BatchForecastResponse,
    ForecastRequest,
    ForecastResponse,
    ModelList,
)
from timedistill.store.errors import InvalidModelName, ModelUnavailable, RegistryError

NPY = "application/x-npy"


def create_api(settings: ServeConfig, registry: RegistryView, backend: Backend) -> FastAPI:
    app = FastAPI(title="timedistill", version="1", summary="Forecasts from distilled MLP students")
    authorize = bearer_token(settings)
    app.exception_handler(RequestValidationError)(invalid_request)

    def resolve(model: str, version: str | None) -> Served:
        try:
            return registry.resolve(model, version)
        except InvalidModelName as exc:
            raise HTTPException(400, str(exc)) from None
        except ModelUnavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None

    async def forecast_of(chosen: Served, histories: np.ndarray, *, batched: bool) -> Forecasts:
        try:
            result = await backend.forecast(chosen.ref, histories, batched=batched)
        except ModelUnavailable as exc:  # its files changed or broke since verification: verify again
            registry.forget(chosen.ref)
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        except ReplicaLost as exc:
            raise HTTPException(503, f"{exc}; send it again", headers={"Retry-After": "1"}) from None
        if not result.finite():
            raise HTTPException(422, f"model {chosen.entry.model_id} forecast non-finite values for this history: "
                                     "its values are far outside the range it was trained on")
        return result

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready when every registered model has a version that loads and answers; lists the
        versions held out and why."""
        listing = registry.models()
        broken = {m.name: m.broken for m in listing.models if m.broken}
        ready = not listing.unavailable
        return JSONResponse({"status": "ready" if ready else "degraded", "models": len(listing.models),
                             "unavailable": listing.unavailable, "broken": broken}, status_code=200 if ready else 503)

    @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(authorize)])
    async def models() -> ModelList:
        return registry.models()

    @app.post("/v1/reload", dependencies=[Depends(authorize)])
    async def reload() -> dict[str, Any]:
        registry.refresh()
        listing = registry.models()
        return {"models": {m.name: m.version for m in listing.models}, "unavailable": listing.unavailable}

    @app.post("/v1/forecast", dependencies=[Depends(authorize)], openapi_extra=json_body(ForecastRequest),
              responses={200: {"model": ForecastResponse}})
    async def forecast(raw: Request) -> Response:
        request = await parse_json(raw, ForecastRequest)
        chosen = resolve(request.model, request.version)
        histories, times = single_history(chosen.entry, request)
        result = await forecast_of(chosen, histories, batched=False)
        quantiles = None if result.quantiles is None else result.quantiles[0]
        return answer(chosen, forecast=result.point[0], **by_level(chosen, quantiles),
                      **({"timestamps": times} if times is not None else {}))

    @app.post("/v1/forecast/batch", dependencies=[Depends(authorize)], openapi_extra=json_body(BatchForecastRequest),
              responses={200: {"model": BatchForecastResponse}})
    async def forecast_batch(raw: Request) -> Response:
        request = await parse_json(raw, BatchForecastRequest)
        chosen = resolve(request.model, request.version)
        histories, times = batch_histories(chosen.entry, request)
        result = await forecast_of(chosen, histories, batched=True)
        dated = any(stamps is not None for stamps in times)
        return answer(chosen, forecasts=result.point, **by_level(chosen, result.quantiles),
                      **({"timestamps": times} if dated else {}))

    @app.post("/v1/forecast/npy", dependencies=[Depends(authorize)],
              openapi_extra={"requestBody": {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}},
                                             "required": True}},
              responses={200: {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}},
                               "description": "the point forecasts as .npy: [S, C] or [N, S, C] float32 (a "
                                              "quantile model's quantiles come from the JSON endpoints only)"}})
    async def forecast_npy(request: Request, model: str = Query(...), version: str | None = Query(None)) -> Response:
        chosen = resolve(model, version)
        histories, single = npy_histories(chosen.entry, await request.body())
        result = await forecast_of(chosen, histories, batched=not single)
        buffer = io.BytesIO()
        np.save(buffer, (result.point[0] if single else result.point).astype(np.float32), allow_pickle=False)
        entry = chosen.entry
        return Response(buffer.getvalue(), media_type=NPY,
                        headers={"x-model": entry.model, "x-model-version": entry.version,
                                 "x-horizon": str(entry.config.horizon),
                                 "x-variables": ",".join(entry.config.variables)})

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def answer(chosen: Served, **fields: Any) -> Response:
    """A JSON forecast: the version that answered, its horizon and variables, and `fields`."""
    entry, config = chosen.entry, chosen.entry.config
    return json_response({"model": entry.model, "version": entry.version, "horizon": config.horizon,
                          "variables": config.variables, "time_column": config.timestamp, **fields})


def by_level(chosen: Served, quantiles: np.ndarray | None) -> dict[str, Any]:
    """The answer's `quantiles`, {level: an array shaped like the point forecast}, for a model
    that has them; nothing for a point model, whose answers stay as they were."""
    if quantiles is None:
        return {}
    return {"quantiles": {str(level): np.ascontiguousarray(quantiles[..., q, :, :])  # orjson: contiguous
                          for q, level in enumerate(chosen.entry.config.quantiles)}}


def json_response(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def json_body(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses its JSON body itself."""
    return {"requestBody": {"content": {"application/json": {"schema": schema.model_json_schema()}},
                            "required": True}}
