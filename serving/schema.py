"""Request and response bodies of the forecasting API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

Row = list[float]
Cell = float | str | None  # a value, a time as text, or a missing value (refused where the model reads it)
Named = dict[str, list[Cell]] | list[dict[str, Cell]]  # columns by name, or records
HistoryBody = list[Row] | Named
HISTORY = ("at least `lookback` rows, oldest first, the last `lookback` used: a list of rows with one value per "
           "variable in the model's order (`variables` of /v1/models), or named columns matched to the variables by "
           "name in any order, as an object of columns ({\"date\": [...], \"OT\": [...]}) or a list of records; a "
           "column named as the model's `time_column` (or any column of dates) dates the forecast")
TIMESTAMPS = "the time of each history row (ISO 8601): the response then dates the forecast"
START = "the time of the first history row; with the model's step it dates the forecast"
QUANTILES = ("a quantile model's forecast at each of its levels (keys as in /v1/models: \"0.1\", \"0.5\", ...), "
             "each shaped like the point forecast, which is the median; absent for a point model")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ForecastRequest(Strict):
    model: str = Field(description="registered model name, e.g. etth1-96")
    history: HistoryBody = Field(description=HISTORY)
    version: str | None = Field(None, description="a registered version (v1, v2, ...); default LATEST")
    timestamps: list[datetime] | None = Field(None, description=TIMESTAMPS)
    start: datetime | None = Field(None, description=START)


class BatchForecastRequest(Strict):
    model: str
    histories: list[HistoryBody] = Field(description="several histories of the same model, each as `history` of "
                                                 "/v1/forecast")
    version: str | None = None
    timestamps: list[list[datetime]] | None = Field(None, description="per history: " + TIMESTAMPS)
    starts: list[datetime] | None = Field(None, description="per history: " + START)


TIME_COLUMN = "the name of the time column of the model's data (what `timestamps` are called in a table)"


class ForecastResponse(BaseModel):
    model: str
    version: str
    horizon: int
    variables: list[str] = Field(description="the name of each column of the forecast")
    time_column: str | None = Field(None, description=TIME_COLUMN)
    forecast: list[Row] = Field(description="`horizon` rows in the units of the history")
    quantiles: dict[str, list[Row]] | None = Field(None, description=QUANTILES)
    timestamps: list[datetime] | None = Field(None, description="the time of each forecast row, when the "
                                                                "request dated its history")


class BatchForecastResponse(BaseModel):
    model: str
    version: str
    horizon: int
    variables: list[str]
    time_column: str | None = Field(None, description=TIME_COLUMN)
    forecasts: list[list[Row]]
    quantiles: dict[str, list[list[Row]]] | None = Field(None, description=QUANTILES)
    timestamps: list[list[datetime]] | None = None


class ModelInfo(BaseModel):
    name: str
    version: str
    versions: list[str]
    lookback: int
    horizon: int
    variables: list[str]
    time_column: str | None = Field(None, description=TIME_COLUMN)
    teacher: str | None = None
    quantiles: list[float] = Field([], exclude_if=lambda levels: not levels,  # a point model's listing as before
                                   description="the levels its forecasts' `quantiles` hold; absent for a point model")
    metrics: dict[str, dict[str, float | int | None]]
    broken: dict[str, str] = Field({}, description="versions held out of serving, and why")


class ModelList(BaseModel):
    models: list[ModelInfo]
    unavailable: dict[str, str] = Field({}, description="registered models with no version that loads, and why")
