"""Histories in: a request's histories as the model's input [N, L, C] in data units, and the
times that date its forecast. A history comes as JSON rows (the model's order), as named columns
(matched by name through the forecast contract, store/contract.py) or as a .npy body; each one
is checked against the model (rows, columns, finite values that fit float32 once standardized,
times in order at the model's step, dates the server can represent). Whatever does not pass is
an HTTPException with a 4xx that names the field."""

from __future__ import annotations

import io
import math
from datetime import datetime
from typing import Any, TypeVar, cast

import numpy as np
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from timedistill.conf.spans import duration
from timedistill.serving.schema import BatchForecastRequest, ForecastRequest, HistoryBody, Named
from timedistill.store.contract import History, check_times, from_frame, from_json_columns
from timedistill.store.errors import InputError
from timedistill.store.predictor import forecast_times
from timedistill.store.records import RegistryEntry

Body = TypeVar("Body", bound=BaseModel)
Dates = list[datetime] | None  # a forecast's times, when its history was dated
FLOAT32_MAX = float(np.finfo(np.float32).max)


async def parse_json(request: Request, schema: type[Body]) -> Body:
    """Parse and validate the body in one pass with pydantic-core's JSON parser. FastAPI's own
    path for a model parameter (stdlib json.loads, then validation) takes longer, and parsing is
    the ingress's main cost per request (BENCHMARKS.md, "Serving", gives the server's CPU per
    request)."""
    try:
        return schema.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def single_history(entry: RegistryEntry, request: ForecastRequest) -> tuple[np.ndarray, Dates]:
    """/v1/forecast's history as [1, lookback, C], and its forecast's times."""
    history, times = read_history(entry, request.history, request.timestamps, request.start, "history",
                                  "timestamps" if request.timestamps is not None else "start")
    return last_rows(history, entry)[None], times


def batch_histories(entry: RegistryEntry, request: BatchForecastRequest) -> tuple[np.ndarray, list[Dates]]:
    """/v1/forecast/batch's histories as [N, lookback, C], and each one's forecast's times."""
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
    return last_rows(histories, entry), [dated for _, dated in read]


def npy_histories(entry: RegistryEntry, body: bytes) -> tuple[np.ndarray, bool]:
    """/v1/forecast/npy's body as [N, lookback, C], and whether it held a single history [L, C]."""
    histories = read_npy(body)
    single = histories.ndim == 2
    histories = histories[None] if single else histories
    return last_rows(histories.astype(np.float64, copy=False), entry), single


def read_history(entry: RegistryEntry, given: HistoryBody, timestamps: list[datetime] | None,
                 start: datetime | None, field: str, time_field: str) -> tuple[np.ndarray, Dates]:
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
            # rows of values went the positional way above: what is left has names
            named = from_frame(from_json_columns(cast(Named, given)), card)
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
    return history.values, forecast_dates(entry, len(history.values), history.times, start, time_field)


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


def forecast_dates(entry: RegistryEntry, rows: int, timestamps: list[datetime] | None, start: datetime | None,
                   field: str) -> Dates:
    """The forecast's timestamps, when the request dated its history (`field` names where:
    "start", "timestamps[2]", ...)."""
    origin = timestamps[-1] if timestamps is not None else start
    if origin is None:
        return None
    if timestamps is not None and len(timestamps) != rows:
        raise HTTPException(422, f"{field}: {len(timestamps)} entries for {rows} history rows")
    try:
        step = duration(entry.config.step)
    except (ValueError, OverflowError):
        raise HTTPException(422, f"model {entry.model} has no regular step ({entry.config.step!r}) to date "
                                 "its forecast with") from None
    try:
        last = origin if timestamps is not None else origin + (rows - 1) * step
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
