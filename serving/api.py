"""The HTTP API (FastAPI), independent of where the model runs: Ray Serve's ingress wraps it
around a handle to the model pool; the bare benchmark server wraps it around an in-process model.

    GET  /healthz                    liveness
    GET  /v1/models                  registered models: version, lookback, horizon, variables, metrics
    POST /v1/forecast                {"model", "history": [[C] x L], "version"?} -> one forecast
    POST /v1/forecast/batch          {"model", "histories": [[[C] x L] x N]} -> N forecasts
    POST /v1/forecast/npy?model=...  body: .npy of [L, C] or [N, L, C] -> .npy of [S, C] / [N, S, C]
    POST /v1/reload                  look for new LATEST versions now

Bad input is a 4xx that says what is wrong, never a 500: a malformed body, the wrong number of
rows or columns, NaN or infinity, an unknown model or version, a name that is not a plain
registry name, a body over the size limit.
"""

from __future__ import annotations

import hmac
import io
import os
import time
from datetime import datetime
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from timedistill.conf import ServeConfig
from timedistill.conf.schema import duration
from timedistill.serving.schema import (
    BatchForecastRequest,
    BatchForecastResponse,
    ForecastRequest,
    ForecastResponse,
    ModelInfo,
    ModelList,
)
from timedistill.store.predictor import forecast_times
from timedistill.store.records import RegistryEntry
from timedistill.store.registry import InvalidModelName, RegistryError, latest, list_models, read_version, versions
from timedistill.store.storage import Storage

NPY = "application/x-npy"
Body = TypeVar("Body", bound=BaseModel)
TOKEN_ENV = "TIMEDISTILL_SERVE_TOKEN"


class Backend(Protocol):
    """Where forecasts are computed. Arrays are in data units: [N, L, C] -> [N, S, C]."""

    async def forecast(self, model_id: str, histories: np.ndarray, *, batched: bool) -> np.ndarray: ...


class RegistryView:
    """Registry lookups for the API. LATEST is re-read at most every `ttl` seconds (this is how
    replicas pick up newly registered versions); a version's metadata never changes once
    complete, so it is cached for good."""

    def __init__(self, storage: Storage, ttl: float) -> None:
        self.storage, self.ttl = storage, ttl
        self._latest: dict[str, tuple[str, float]] = {}
        self._entries: dict[tuple[str, str], RegistryEntry] = {}

    def refresh(self) -> None:
        self._latest.clear()

    def resolve(self, name: str, version: str | None) -> RegistryEntry:
        """The registry entry (config, scaler, metrics) of name@version, LATEST by default."""
        if version is None:
            cached = self._latest.get(name)
            if cached is None or cached[1] < time.monotonic():
                found = latest(self.storage, name)  # validates the name first
                if found is None:
                    raise RegistryError(f"model {name!r} is not registered")
                cached = (found, time.monotonic() + self.ttl)
                self._latest[name] = cached
            version = cached[0]
        key = (name, version)
        if key not in self._entries:
            self._entries[key] = read_version(self.storage, name, version)
        return self._entries[key]

    def models(self) -> list[ModelInfo]:
        infos = []
        for name in list_models(self.storage):
            entry = self.resolve(name, None)
            config = entry.config
            infos.append(ModelInfo(
                name=name, version=entry.version, versions=versions(self.storage, name),
                lookback=config.lookback, horizon=config.horizon, variables=config.variables,
                teacher=config.teacher,
                metrics={role: headline.to_json() for role, headline in entry.metrics.headline().items()}))
        return infos


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413, whether it says its length
    up front or streams it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Any) -> None:
        body = orjson.dumps({"detail": f"request body is larger than the limit of {self.limit} bytes"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def json_response(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def create_api(settings: ServeConfig, registry: RegistryView, backend: Backend) -> FastAPI:
    token = settings.auth_token or os.environ.get(TOKEN_ENV) or None
    app = FastAPI(title="timedistill", version="1", summary="Forecasts from distilled MLP students")

    bearer = HTTPBearer(auto_error=False, description="serve.auth_token (or $TIMEDISTILL_SERVE_TOKEN), when set")

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors()[:5]:
            if error["type"] == "json_invalid":
                problems.append(f"malformed JSON body ({error['msg'].removeprefix('Invalid JSON: ')})")
                continue
            where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
            problems.append(f"{where}: {error['msg']}")
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    def entry_for(model: str, version: str | None) -> RegistryEntry:
        try:
            return registry.resolve(model, version)
        except InvalidModelName as exc:
            raise HTTPException(400, str(exc)) from None
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None

    def last_rows(histories: np.ndarray, entry: RegistryEntry) -> np.ndarray:
        """The last `lookback` rows of each history [..., rows, C], checked."""
        config = entry.config
        rows, columns = histories.shape[-2], histories.shape[-1]
        lookback, n_vars = config.lookback, len(config.variables)
        if rows < lookback:
            raise HTTPException(422, f"history has {rows} rows; model {entry.model} needs at least {lookback} "
                                     "(its lookback), oldest first")
        if columns != n_vars:
            raise HTTPException(422, f"history rows have {columns} values; model {entry.model} needs "
                                     f"{n_vars}: {config.variables}")
        used = histories[..., rows - lookback :, :]
        if not np.isfinite(used).all():
            raise HTTPException(422, "history contains NaN or infinite values")
        return used

    def dates(entry: RegistryEntry, rows: int, timestamps: list[datetime] | None,
              start: datetime | None) -> list[datetime] | None:
        """The forecast's timestamps, when the request dated its history."""
        if timestamps is None and start is None:
            return None
        if timestamps is not None and len(timestamps) != rows:
            raise HTTPException(422, f"timestamps has {len(timestamps)} entries for {rows} history rows")
        try:
            step = duration(entry.config.step)
        except ValueError:
            raise HTTPException(422, f"model {entry.model} has no regular step ({entry.config.step!r}) to date "
                                     "its forecast with") from None
        last = timestamps[-1] if timestamps is not None else start + (rows - 1) * step
        return forecast_times(last, step, entry.config.horizon)

    def to_array(rows: list[Any], what: str) -> np.ndarray:
        try:
            return np.asarray(rows, dtype=np.float64)
        except ValueError:
            raise HTTPException(422, f"{what} must be a rectangular array of numbers (ragged rows?)") from None

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(authorize)])
    async def models() -> ModelList:
        return ModelList(models=registry.models())

    @app.post("/v1/reload", dependencies=[Depends(authorize)])
    async def reload() -> dict[str, Any]:
        registry.refresh()
        return {"models": {m.name: m.version for m in registry.models()}}

    def answer(entry: RegistryEntry, **fields: Any) -> Response:
        return json_response({"model": entry.model, "version": entry.version, "horizon": entry.config.horizon,
                              "variables": entry.config.variables, **fields})

    @app.post("/v1/forecast", dependencies=[Depends(authorize)], openapi_extra=json_body(ForecastRequest),
              responses={200: {"model": ForecastResponse}})
    async def forecast(raw: Request) -> Response:
        request = await parse_json(raw, ForecastRequest)
        entry = entry_for(request.model, request.version)
        history = to_array(request.history, "history")
        if history.ndim != 2:
            raise HTTPException(422, "history must be a list of rows")
        times = dates(entry, len(history), request.timestamps, request.start)
        result = await backend.forecast(entry.model_id, last_rows(history, entry)[None], batched=False)
        return answer(entry, forecast=result[0], **({"timestamps": times} if times is not None else {}))

    @app.post("/v1/forecast/batch", dependencies=[Depends(authorize)], openapi_extra=json_body(BatchForecastRequest),
              responses={200: {"model": BatchForecastResponse}})
    async def forecast_batch(raw: Request) -> Response:
        request = await parse_json(raw, BatchForecastRequest)
        entry = entry_for(request.model, request.version)
        if not request.histories:
            raise HTTPException(422, "histories must be a non-empty list of histories (lists of rows)")
        lookback = entry.config.lookback
        histories = to_array([history[-lookback:] for history in request.histories], "histories")
        if histories.ndim != 3:
            raise HTTPException(422, "histories must be a non-empty list of histories (lists of rows)")
        lengths = [len(history) for history in request.histories]
        if min(lengths) < lookback:
            raise HTTPException(422, f"a history has {min(lengths)} rows; model {entry.model} needs at least "
                                     f"{lookback} (its lookback), oldest first")
        for given in (request.timestamps, request.starts):
            if given is not None and len(given) != len(lengths):
                raise HTTPException(422, f"{len(given)} timestamps or starts for {len(lengths)} histories")
        times = None
        if request.timestamps is not None or request.starts is not None:
            times = [dates(entry, rows, request.timestamps[i] if request.timestamps else None,
                           request.starts[i] if request.starts else None) for i, rows in enumerate(lengths)]
        result = await backend.forecast(entry.model_id, last_rows(histories, entry), batched=True)
        return answer(entry, forecasts=result, **({"timestamps": times} if times is not None else {}))

    @app.post("/v1/forecast/npy", dependencies=[Depends(authorize)],
              openapi_extra={"requestBody": {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}},
                                             "required": True}},
              responses={200: {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}},
                               "description": "the forecasts as .npy: [S, C] or [N, S, C] float32"}})
    async def forecast_npy(request: Request, model: str = Query(...), version: str | None = Query(None)) -> Response:
        entry = entry_for(model, version)
        try:
            histories = np.load(io.BytesIO(await request.body()), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise HTTPException(400, f"body is not a NumPy .npy array: {exc}") from None
        if histories.dtype.kind not in "fiu" or histories.ndim not in (2, 3) or histories.size == 0:
            raise HTTPException(422, f"expected a numeric [L, C] or [N, L, C] array, got {histories.dtype} "
                                     f"{list(histories.shape)}")
        single = histories.ndim == 2
        histories = histories[None] if single else histories
        histories = last_rows(histories.astype(np.float64, copy=False), entry)
        result = await backend.forecast(entry.model_id, histories, batched=not single)
        buffer = io.BytesIO()
        np.save(buffer, (result[0] if single else result).astype(np.float32), allow_pickle=False)
        return Response(buffer.getvalue(), media_type=NPY,
                        headers={"x-model": entry.model, "x-model-version": entry.version,
                                 "x-horizon": str(entry.config.horizon),
                                 "x-variables": ",".join(entry.config.variables)})

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


async def parse_json(request: Request, schema: type[Body]) -> Body:
    """Parse and validate the body in one pass with pydantic-core's JSON parser. FastAPI's own
    path for a model parameter (stdlib json.loads, then validation) takes longer, and parsing is
    the ingress's main cost per request (BENCHMARKS.md, "Serving", gives the server's CPU per
    request)."""
    try:
        return schema.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def json_body(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses its JSON body itself."""
    return {"requestBody": {"content": {"application/json": {"schema": schema.model_json_schema()}},
                            "required": True}}

