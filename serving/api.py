"""The HTTP API (FastAPI), independent of where the model runs: Ray Serve's ingress wraps it
around a handle to the model pool; the bare benchmark server wraps it around an in-process model.

    GET  /healthz                    liveness
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
"""

from __future__ import annotations

import hmac
import io
import math
import os
import time
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from timedistill.conf import ServeConfig
from timedistill.conf.spans import duration
from timedistill.serving.schema import (
    BatchForecastRequest,
    BatchForecastResponse,
    ForecastRequest,
    ForecastResponse,
    HistoryBody,
    ModelInfo,
    ModelList,
)
from timedistill.store.contract import History, check_times, from_frame, from_json_columns
from timedistill.store.errors import (
    BrokenVersion,
    InputError,
    InvalidModelName,
    ModelUnavailable,
    RegistryError,
    one_line,
)
from timedistill.store.forecaster import ForecastModel, load_verified
from timedistill.store.predictor import forecast_times
from timedistill.store.records import RegistryEntry
from timedistill.store.registry import latest, registered_models, version_files, versions
from timedistill.store.storage import Storage

NPY = "application/x-npy"
Body = TypeVar("Body", bound=BaseModel)
TOKEN_ENV = "TIMEDISTILL_SERVE_TOKEN"
FLOAT32_MAX = float(np.finfo(np.float32).max)


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
    """Where forecasts are computed: [N, L, C] in data units -> `Forecasts` (`Forecasts.of` a
    loaded model). `model_id` is `served_id(entry)`, and `load_served` loads what it names. A
    model whose files no longer load raises ModelUnavailable; a request lost with the replica
    that held it raises ReplicaLost."""

    async def forecast(self, model_id: str, histories: np.ndarray, *, batched: bool) -> Forecasts: ...


class ReplicaLost(Exception):
    """The replica computing a forecast stopped before it answered (killed, its node lost): the
    request did nothing and may be sent again."""


def served_id(entry: RegistryEntry, files: str) -> str:
    """The id a version is loaded and routed by: "name@version#files", where `files` is the digest
    of its files when it was verified. When a version's files change, its id changes with them:
    no replica keeps answering from (or keeps refusing) files that are no longer there."""
    return f"{entry.model_id}#{files}"


def split_model_id(model_id: str) -> tuple[str, str, str | None]:
    """(name, version, files digest or None) of an id built by `served_id` (or "name@version")."""
    name, rest = model_id.split("@", 1)
    version, _, files = rest.partition("#")
    return name, version, files or None


def load_served(storage: Storage, model_id: str) -> ForecastModel:
    """The model an id names, loaded and probed from files that are still those verified;
    otherwise ModelUnavailable naming why (the ingress then verifies the version again)."""
    name, version, files = split_model_id(model_id)
    if files is not None and version_files(storage, name, version) != files:
        raise BrokenVersion(name, version, "its files changed since it was verified")
    try:
        return load_verified(storage, name, version)[1]
    except BrokenVersion:
        raise
    except RegistryError as exc:  # gone since it was verified
        raise BrokenVersion(name, version, one_line(exc)) from None


class Served(NamedTuple):
    """What a model's LATEST resolved to, until when."""

    version: str | None  # the version to serve
    reason: str  # why there is none
    until: float  # time.monotonic


class Verdict(NamedTuple):
    """What verification found for one version, and of which files."""

    files: str  # `version_files` when verified
    entry: RegistryEntry | None  # when it serves
    reason: str | None  # why it does not
    checked: float  # when `files` was last compared with the storage (time.monotonic)


class RegistryView:
    """Registry lookups for the API, verified: a version is served only once its files parse and
    its weights load and answer a probe. A LATEST that fails falls back to the newest version
    before it that passes, and the failure (with its reason) is reported by /v1/models and
    /readyz; a LATEST that names no version at all (empty, not text, a folder) makes its model
    unavailable, with the reason. LATEST is re-read at most every `ttl` seconds (this is how
    replicas pick up newly registered versions and rollbacks).

    No verdict outlives a change of the files: each one records the version's files (`version_files`,
    one listing) and is compared with them at most every `ttl` seconds; files that changed are
    verified again. A LATEST that changes (a new version, a rollback) and a reload verify that
    model's versions again, and a replica that finds a version's files changed or unloadable
    (`load_served`) makes the ingress forget its verdict (`forget`)."""

    def __init__(self, storage: Storage, ttl: float) -> None:
        self.storage, self.ttl = storage, ttl
        self._latest: dict[str, Served] = {}
        self._pointers: dict[str, str] = {}  # model -> what its LATEST held when last read
        self._verdicts: dict[tuple[str, str], Verdict] = {}

    def refresh(self) -> None:
        """Read every LATEST and verify every version again."""
        self._latest.clear()
        self._pointers.clear()
        self._verdicts.clear()

    def forget(self, name: str, version: str) -> None:
        """A replica could not load this version: verify it again before it is served again."""
        self._verdicts.pop((name, version), None)
        self._latest.pop(name, None)

    def resolve(self, name: str, version: str | None) -> RegistryEntry:
        """The verified entry (config, scaler, metrics) of name@version; LATEST by default, or the
        newest good version before a LATEST that fails."""
        if version is not None:
            return self._verified(name, version).entry
        served = self._latest.get(name)
        if served is not None and served.until >= time.monotonic() and served.version is not None:
            try:
                return self._verified(name, served.version).entry
            except ModelUnavailable:  # it broke since LATEST was read: fall back at once
                served = None
        if served is None or served.until < time.monotonic():
            try:
                served = Served(self._servable(name), "", time.monotonic() + self.ttl)
            except ModelUnavailable as exc:  # kept for `ttl` too: a broken model costs no reads per request
                served = Served(None, str(exc), time.monotonic() + self.ttl)
            self._latest[name] = served
        if served.version is None:
            raise ModelUnavailable(served.reason)
        return self._verified(name, served.version).entry

    def files(self, entry: RegistryEntry) -> str:
        """The digest of the files `entry` was verified from (for `served_id`)."""
        verdict = self._verdicts.get((entry.model, entry.version))
        return verdict.files if verdict is not None else version_files(self.storage, entry.model, entry.version)

    def broken(self, name: str) -> dict[str, str]:
        """The versions of a model that failed verification, and why."""
        return {version: verdict.reason for (model, version), verdict in self._verdicts.items()
                if model == name and verdict.reason is not None}

    def _servable(self, name: str) -> str:
        """The version to serve for LATEST: the version it names when it verifies, else the newest
        complete one before it that does."""
        pointer = latest(self.storage, name)  # validates the name first; BrokenLatest when it names no version
        if pointer is None:
            raise RegistryError(f"model {name!r} is not registered")
        if self._pointers.get(name, pointer) != pointer:  # a new version or a rollback: verify again
            for key in [key for key in self._verdicts if key[0] == name]:
                del self._verdicts[key]
        self._pointers[name] = pointer
        complete = versions(self.storage, name)
        for key in [key for key in self._verdicts if key[0] == name and key[1] not in complete]:
            del self._verdicts[key]  # removed versions are no longer reported
        if pointer not in complete:
            self._verdicts[(name, pointer)] = Verdict("", None, f"LATEST points at {pointer!r}, which is not a "
                                                      "complete version", time.monotonic())
        limit = int(pointer[1:])  # a rollback's LATEST: nothing newer is served
        for candidate in sorted((v for v in complete if int(v[1:]) <= limit), key=lambda v: -int(v[1:])):
            try:
                self._verified(name, candidate)
            except ModelUnavailable:
                continue
            return candidate
        reasons = "; ".join(f"{v}: {why}" for v, why in self.broken(name).items())
        raise ModelUnavailable(f"model {name!r} has no version that loads ({reasons})")

    def _verified(self, name: str, version: str) -> Verdict:
        """The verdict on name@version, verified again when its files changed; raises
        ModelUnavailable for a broken version, RegistryError for one that is not registered."""
        key, now = (name, version), time.monotonic()
        verdict = self._verdicts.get(key)
        if verdict is None or verdict.checked + self.ttl < now:
            files = version_files(self.storage, name, version)  # validates the version's form first
            if verdict is None or verdict.files != files:
                verdict = self._verify(name, version, files)
            self._verdicts[key] = verdict = verdict._replace(checked=now)
        if verdict.reason is not None:
            raise ModelUnavailable(f"version {version} of model {name!r} is broken: {verdict.reason}")
        return verdict

    def _verify(self, name: str, version: str, files: str) -> Verdict:
        """The verdict on the files as they are (an unregistered version raises RegistryError)."""
        try:
            entry, _ = load_verified(self.storage, name, version)
        except BrokenVersion as exc:
            return Verdict(files, None, exc.reason, time.monotonic())
        return Verdict(files, entry, None, time.monotonic())

    def models(self) -> ModelList:
        infos, unavailable = [], {}
        for name in registered_models(self.storage):
            try:
                entry = self.resolve(name, None)
            except RegistryError as exc:  # one model's broken entry never hides the others
                unavailable[name] = str(exc)
                continue
            config = entry.config
            infos.append(ModelInfo(
                name=name, version=entry.version, versions=versions(self.storage, name),
                lookback=config.lookback, horizon=config.horizon, variables=config.variables,
                time_column=config.timestamp, teacher=config.teacher, quantiles=config.quantiles,
                broken=self.broken(name),
                metrics={role: headline.to_json() for role, headline in entry.metrics.headline().items()}))
        return ModelList(models=infos, unavailable=unavailable)


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
        except ModelUnavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
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
        bad = ~np.isfinite(used)
        if not bad.any():  # standardized, a value must fit the model's float32
            bad = np.abs((used - np.asarray(entry.scaler.mean)) / np.asarray(entry.scaler.std)) > FLOAT32_MAX
        if bad.any():
            *history, row, column = (int(i) for i in np.argwhere(bad)[0])
            where = f"history {history[0]}, " if history else ""
            raise HTTPException(422, f"{where}row {rows - lookback + row}, column {column} "
                                     f"({config.variables[column]}): {used[tuple(np.argwhere(bad)[0])]!r} is not "
                                     "a finite number the model can take (NaN, infinite, or too large for float32 "
                                     "once standardized)")
        return used

    async def forecast_of(entry: RegistryEntry, histories: np.ndarray, *, batched: bool) -> Forecasts:
        try:
            result = await backend.forecast(served_id(entry, registry.files(entry)), histories, batched=batched)
        except ModelUnavailable as exc:  # its files changed or broke since verification: verify again
            registry.forget(entry.model, entry.version)
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        except ReplicaLost as exc:
            raise HTTPException(503, f"{exc}; send it again", headers={"Retry-After": "1"}) from None
        if not result.finite():
            raise HTTPException(422, f"model {entry.model_id} forecast non-finite values for this history: its "
                                     "values are far outside the range it was trained on")
        return result

    def dates(entry: RegistryEntry, rows: int, timestamps: list[datetime] | None, start: datetime | None,
              field: str) -> list[datetime] | None:
        """The forecast's timestamps, when the request dated its history (`field` names where:
        "start", "timestamps[2]", ...)."""
        if timestamps is None and start is None:
            return None
        if timestamps is not None and len(timestamps) != rows:
            raise HTTPException(422, f"{field}: {len(timestamps)} entries for {rows} history rows")
        try:
            step = duration(entry.config.step)
        except (ValueError, OverflowError):
            raise HTTPException(422, f"model {entry.model} has no regular step ({entry.config.step!r}) to date "
                                     "its forecast with") from None
        try:
            last = timestamps[-1] if timestamps is not None else start + (rows - 1) * step
            return forecast_times(last, step, entry.config.horizon)
        except OverflowError:
            raise HTTPException(422, f"{field}: the forecast's {entry.config.horizon} steps of {entry.config.step} "
                                     "after this history end beyond the year 9999, a time range the server "
                                     "cannot represent") from None

    def to_array(rows: list[Any], what: str) -> np.ndarray:
        try:
            return np.asarray(rows, dtype=np.float64)
        except ValueError:
            raise HTTPException(422, f"{what} must be a rectangular array of numbers (ragged rows?)") from None

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

    def answer(entry: RegistryEntry, **fields: Any) -> Response:
        return json_response({"model": entry.model, "version": entry.version, "horizon": entry.config.horizon,
                              "variables": entry.config.variables, "time_column": entry.config.timestamp, **fields})

    def by_level(entry: RegistryEntry, quantiles: np.ndarray | None) -> dict[str, Any]:
        """The answer's `quantiles`, {level: an array shaped like the point forecast}, for a model
        that has them; nothing for a point model, whose answers stay as they were."""
        if quantiles is None:
            return {}
        return {"quantiles": {str(level): np.ascontiguousarray(quantiles[..., q, :, :])  # orjson: contiguous
                              for q, level in enumerate(entry.config.quantiles)}}

    def read_history(entry: RegistryEntry, given: HistoryBody, timestamps: list[datetime] | None,
                     start: datetime | None, field: str, time_field: str) -> tuple[np.ndarray, list[datetime] | None]:
        """A history as the model's input [rows, C] and the forecast's times (when it is dated):
        named columns are matched to the model's variables by name (the forecast contract), a
        list of rows is taken in the model's order. `field` and `time_field` name where the
        history and its times are in the request ("histories[2]", "starts[2]")."""
        card = entry.card
        if isinstance(given, list) and all(isinstance(row, list) for row in given):  # rows: positional
            values = to_array(given, field)
            if values.ndim != 2:
                raise HTTPException(422, f"{field} must be a list of rows, or named columns")
            history = History(values, timestamps)
        else:
            try:
                named = from_frame(from_json_columns(given), card)
            except InputError as exc:
                raise HTTPException(422, f"{field}: {exc}") from None
            if named.times is None:
                history = History(named.values, timestamps)
            elif timestamps is not None or start is not None:
                raise HTTPException(422, f"{field} has a time column: give no timestamps or start beside it")
            else:
                history, time_field = named, field
        if history.times is not None and len(history.times) == len(history.values):
            try:
                check_times(history.times, card, entry.config.lookback)
            except InputError as exc:
                raise HTTPException(422, f"{time_field}: {exc}") from None
        return history.values, dates(entry, len(history.values), history.times, start, time_field)

    @app.post("/v1/forecast", dependencies=[Depends(authorize)], openapi_extra=json_body(ForecastRequest),
              responses={200: {"model": ForecastResponse}})
    async def forecast(raw: Request) -> Response:
        request = await parse_json(raw, ForecastRequest)
        entry = entry_for(request.model, request.version)
        history, times = read_history(entry, request.history, request.timestamps, request.start, "history",
                                      "timestamps" if request.timestamps is not None else "start")
        result = await forecast_of(entry, last_rows(history, entry)[None], batched=False)
        quantiles = None if result.quantiles is None else result.quantiles[0]
        return answer(entry, forecast=result.point[0], **by_level(entry, quantiles),
                      **({"timestamps": times} if times is not None else {}))

    @app.post("/v1/forecast/batch", dependencies=[Depends(authorize)], openapi_extra=json_body(BatchForecastRequest),
              responses={200: {"model": BatchForecastResponse}})
    async def forecast_batch(raw: Request) -> Response:
        request = await parse_json(raw, BatchForecastRequest)
        entry = entry_for(request.model, request.version)
        count = len(request.histories)
        if not count:
            raise HTTPException(422, "histories must be a non-empty list of histories")
        for given in (request.timestamps, request.starts):
            if given is not None and len(given) != count:
                raise HTTPException(422, f"{len(given)} timestamps or starts for {count} histories")
        read = [read_history(entry, history, request.timestamps[i] if request.timestamps else None,
                             request.starts[i] if request.starts else None, f"histories[{i}]",
                             f"timestamps[{i}]" if request.timestamps else f"starts[{i}]")
                for i, history in enumerate(request.histories)]
        lookback = entry.config.lookback
        lengths = [len(values) for values, _ in read]
        if min(lengths) < lookback:
            raise HTTPException(422, f"a history has {min(lengths)} rows; model {entry.model} needs at least "
                                     f"{lookback} (its lookback), oldest first")
        columns = {values.shape[1] for values, _ in read}
        if len(columns) > 1:
            raise HTTPException(422, f"histories have rows of {sorted(columns)} values; model {entry.model} needs "
                                     f"{len(entry.config.variables)}")
        histories = np.stack([values[-lookback:] for values, _ in read])
        times = [dated for _, dated in read]
        result = await forecast_of(entry, last_rows(histories, entry), batched=True)
        dated = any(stamps is not None for stamps in times)
        return answer(entry, forecasts=result.point, **by_level(entry, result.quantiles),
                      **({"timestamps": times} if dated else {}))

    @app.post("/v1/forecast/npy", dependencies=[Depends(authorize)],
              openapi_extra={"requestBody": {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}},
                                             "required": True}},
              responses={200: {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}},
                               "description": "the point forecasts as .npy: [S, C] or [N, S, C] float32 (a "
                                              "quantile model's quantiles come from the JSON endpoints only)"}})
    async def forecast_npy(request: Request, model: str = Query(...), version: str | None = Query(None)) -> Response:
        entry = entry_for(model, version)
        histories = read_npy(await request.body())
        single = histories.ndim == 2
        histories = histories[None] if single else histories
        histories = last_rows(histories.astype(np.float64, copy=False), entry)
        result = await forecast_of(entry, histories, batched=not single)
        buffer = io.BytesIO()
        np.save(buffer, (result.point[0] if single else result.point).astype(np.float32), allow_pickle=False)
        return Response(buffer.getvalue(), media_type=NPY,
                        headers={"x-model": entry.model, "x-model-version": entry.version,
                                 "x-horizon": str(entry.config.horizon),
                                 "x-variables": ",".join(entry.config.variables)})

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def read_npy(body: bytes) -> np.ndarray:
    """A `.npy` body as an array, checked before anything is allocated: the format (no `.npz`, no
    pickles), the header (a numeric dtype, [L, C] or [N, L, C]) and that the body holds exactly
    the bytes the header declares."""
    if body[:2] == b"PK":
        raise HTTPException(400, "body is a .npz archive; send one .npy array")
    if body[:6] != b"\x93NUMPY":
        raise HTTPException(400, "body is not a NumPy .npy array (no .npy magic string)")
    stream = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)
    except (ValueError, OSError, EOFError) as exc:
        raise HTTPException(400, f"body is not a NumPy .npy array: {exc}") from None
    if dtype.hasobject or dtype.kind not in "fiu" or len(shape) not in (2, 3) or min(shape) <= 0:
        raise HTTPException(422, f"expected a numeric [L, C] or [N, L, C] array of positive dimensions, got {dtype} "
                                 f"{list(shape)}")
    count = math.prod(shape)  # a Python int: no overflow, however large the header's dimensions
    declared, held = count * dtype.itemsize, len(body) - stream.tell()
    if declared != held:
        raise HTTPException(400, f"the .npy header declares {list(shape)} {dtype} ({declared} bytes) but the body "
                                 f"holds {held} bytes of data")
    return np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell()).reshape(
        shape, order="F" if fortran else "C")


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

