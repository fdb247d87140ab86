"""Request and response bodies of the forecasting API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Row = list[float]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ForecastRequest(Strict):
    model: str = Field(description="registered model name, e.g. etth1-96")
    history: list[Row] = Field(description="the last `lookback` rows, each with one value per variable")
    version: str | None = Field(None, description="a registered version (v1, v2, ...); default LATEST")


class BatchForecastRequest(Strict):
    model: str
    histories: list[list[Row]] = Field(description="several histories of the same model")
    version: str | None = None


class ForecastResponse(BaseModel):
    model: str
    version: str
    horizon: int
    forecast: list[Row] = Field(description="`horizon` rows in the units of the history")


class BatchForecastResponse(BaseModel):
    model: str
    version: str
    horizon: int
    forecasts: list[list[Row]]


class ModelInfo(BaseModel):
    name: str
    version: str
    versions: list[str]
    lookback: int
    horizon: int
    variables: list[str]
    teacher: str | None = None
    metrics: dict[str, dict[str, float | int | None]]


class ModelList(BaseModel):
    models: list[ModelInfo]
