"""A client for `timedistill serve`: forecasts in the data's units, with timestamps and variable
names, from a program.

    client = timedistill.Client("http://127.0.0.1:8000", token=None)
    client.models()                                     # what is registered
    result = client.forecast("etth1-96", frame)          # a frame: columns matched to variables by name
    result.values, result.timestamps, result.to_polars()
    result.quantiles                                     # a quantile model's {0.1: [horizon, C], ...}
    many = client.forecast_batch("etth1-96", histories)  # large batches of arrays travel as .npy; the point only

A history is a Polars or pandas frame (or a long one: unique_id, ds, y), sent with its column
names and matched to the model's variables by name on the server, its time column dating the
forecast; or an array [rows >= lookback, C] whose columns are taken in the model's order.

`AsyncClient` has the same methods as coroutines. A 503 (the server is overloaded) is retried
after its Retry-After; a 4xx raises `RequestError` with the server's message; connection errors
are retried too, then raised as `ServerUnavailable`.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import numpy as np

from timedistill.serving.schema import ModelInfo
from timedistill.store.contract import Layout, forecast_frame, is_frame, to_polars

NPY = "application/x-npy"


class ClientError(Exception):
    """Anything the client could not get from the server."""


class RequestError(ClientError):
    """The server refused the request (4xx): the message is the server's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class ServerUnavailable(ClientError):
    """No answer after every retry: the server is down, overloaded (503) or failing (5xx)."""


@dataclass(frozen=True)
class Forecast:
    """One history's forecast."""

    model: str
    version: str
    variables: list[str]
    values: np.ndarray  # [horizon, variables], the data's units; a quantile model's median
    timestamps: list[datetime] | None  # when the request dated its history
    quantiles: dict[float, np.ndarray] | None = None  # level -> [horizon, variables]; None for a point model
    time_column: str | None = None  # the time column of the model's data

    def to_polars(self, layout: Layout = "wide") -> Any:
        """Wide, a row per step: the data's time column (or the step number), a column per
        variable and, for a quantile model, a column per variable and level besides the median
        ("OT_q0.1"); long, unique_id, ds, y (and y_q0.1, ...): as `load_model(...).predict`."""
        return forecast_frame(self.values, self.quantiles, self.variables, self.timestamps, self.time_column, layout)

    def to_pandas(self, layout: Layout = "wide") -> Any:
        return self.to_polars(layout).to_pandas()


class _Requests:
    """What both clients send and how they read the answers (the transport is theirs)."""

    def __init__(self, retries: int, npy_min_batch: int) -> None:
        self.retries, self.npy_min_batch = retries, npy_min_batch

    @staticmethod
    def forecast_body(model: str, history: Any, timestamps: Any, start: Any, version: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "history": _history(history)}
        if version is not None:
            body["version"] = version
        if timestamps is not None:
            body["timestamps"] = [_iso(t) for t in timestamps]
        if start is not None:
            body["start"] = _iso(start)
        return body

    def batch_request(self, model: str, histories: Sequence[Any], version: str | None) -> dict[str, Any]:
        named = any(is_frame(history) for history in histories)  # names travel as JSON, matched by the server
        arrays = [] if named else [np.asarray(h, dtype=np.float32) for h in histories]
        if len(arrays) >= self.npy_min_batch and len({a.shape for a in arrays}) == 1:  # one binary body
            buffer = io.BytesIO()
            np.save(buffer, np.stack(arrays), allow_pickle=False)
            params = {"model": model} | ({"version": version} if version else {})
            return {"url": "/v1/forecast/npy", "params": params, "content": buffer.getvalue(),
                    "headers": {"content-type": NPY}}
        body: dict[str, Any] = {"model": model, "histories": [_history(h) for h in histories]}
        if version is not None:
            body["version"] = version
        return {"url": "/v1/forecast/batch", "json": body}

    @staticmethod
    def delay(response: httpx.Response | None, attempt: int) -> float:
        """How long to wait before the next attempt: the server's Retry-After, else backing off."""
        if response is not None:
            try:
                return min(float(response.headers.get("retry-after", "")), 30.0)
            except ValueError:
                pass
        return min(0.5 * 2**attempt, 8.0)

    @staticmethod
    def check(response: httpx.Response) -> httpx.Response:
        if 400 <= response.status_code < 500:
            try:
                message = response.json().get("detail", response.text)
            except ValueError:
                message = response.text
            raise RequestError(response.status_code, str(message))
        if response.status_code >= 500:
            raise ServerUnavailable(f"{response.status_code}: {response.text[:200]}")
        return response

    @staticmethod
    def forecast(response: httpx.Response) -> Forecast:
        body = response.json()
        stamps = [datetime.fromisoformat(t) for t in body["timestamps"]] if body.get("timestamps") else None
        quantiles = ({float(level): np.asarray(values) for level, values in body["quantiles"].items()}
                     if "quantiles" in body else None)
        return Forecast(body["model"], body["version"], body["variables"], np.asarray(body["forecast"]), stamps,
                        quantiles, body.get("time_column"))

    @staticmethod
    def batch(response: httpx.Response) -> np.ndarray:
        if response.headers.get("content-type", "").startswith(NPY):
            return np.load(io.BytesIO(response.content), allow_pickle=False).astype(np.float64)
        return np.asarray(response.json()["forecasts"])

    @staticmethod
    def models(response: httpx.Response) -> list[ModelInfo]:
        return [ModelInfo.model_validate(item) for item in response.json()["models"]]


class Client:
    """A blocking client; use it as a context manager, or `close()` it."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 3,
                 npy_min_batch: int = 16, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)
        self._requests = _Requests(retries, npy_min_batch)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def models(self) -> list[ModelInfo]:
        return self._requests.models(self._send("GET", "/v1/models"))

    def forecast(self, model: str, history: Any, timestamps: Sequence[Any] | None = None, version: str | None = None,
                 start: Any = None) -> Forecast:
        body = self._requests.forecast_body(model, history, timestamps, start, version)
        return self._requests.forecast(self._send("POST", "/v1/forecast", json=body))

    def forecast_batch(self, model: str, histories: Sequence[Any], version: str | None = None) -> np.ndarray:
        """[N, horizon, variables], the point forecasts (a quantile model's quantiles come with
        `forecast`); a batch of at least `npy_min_batch` equal histories travels as .npy."""
        request = self._requests.batch_request(model, histories, version)
        return self._requests.batch(self._send("POST", request.pop("url"), **request))

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self._requests.retries):
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError:
                time.sleep(self._requests.delay(None, attempt))
                continue
            if response.status_code != 503:
                return self._requests.check(response)
            time.sleep(self._requests.delay(response, attempt))
        try:  # the last attempt: its answer, or its error, is the caller's
            return self._requests.check(self._http.request(method, url, **kwargs))
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{self._http.base_url}: {exc}") from None


class AsyncClient:
    """The same methods as `Client`, as coroutines; use it with `async with`, or `await aclose()`."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 3,
                 npy_min_batch: int = 16, transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, transport=transport)
        self._requests = _Requests(retries, npy_min_batch)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> list[ModelInfo]:
        return self._requests.models(await self._send("GET", "/v1/models"))

    async def forecast(self, model: str, history: Any, timestamps: Sequence[Any] | None = None,
                       version: str | None = None, start: Any = None) -> Forecast:
        body = self._requests.forecast_body(model, history, timestamps, start, version)
        return self._requests.forecast(await self._send("POST", "/v1/forecast", json=body))

    async def forecast_batch(self, model: str, histories: Sequence[Any], version: str | None = None) -> np.ndarray:
        request = self._requests.batch_request(model, histories, version)
        return self._requests.batch(await self._send("POST", request.pop("url"), **request))

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self._requests.retries):
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError:
                await asyncio.sleep(self._requests.delay(None, attempt))
                continue
            if response.status_code != 503:
                return self._requests.check(response)
            await asyncio.sleep(self._requests.delay(response, attempt))
        try:
            return self._requests.check(await self._http.request(method, url, **kwargs))
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{self._http.base_url}: {exc}") from None


def _history(history: Any) -> list[list[float]] | dict[str, list[Any]]:
    """A history as JSON: a frame as its named columns (dates as ISO text, NaN as null), an
    array-like [rows, variables] of numbers as rows."""
    if is_frame(history):
        return {column.name: _cells(column) for column in to_polars(history).iter_columns()}
    rows = np.asarray(history, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"a history is [rows, variables], got an array of shape {list(rows.shape)}")
    return rows.tolist()


def _cells(column: Any) -> list[Any]:
    import polars as pl

    if column.dtype.is_temporal():
        return [None if value is None else value.isoformat() for value in column.to_list()]
    if column.dtype.is_numeric():
        return column.cast(pl.Float64).fill_nan(None).to_list()
    return column.cast(pl.String).to_list()


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
