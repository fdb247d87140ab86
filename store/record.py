"""The one kind of record that passes between the pipeline's steps and to serving: a frozen
pydantic model that reads and writes the JSON file it is stored as.

Fields marked `Field(exclude=True)` say where a record was found (its folder, whether it was
reused) and stay out of its JSON. Unknown keys in a file are ignored, so that a reader keeps
working on files written by a newer version."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="constants",
                              validate_by_name=True, serialize_by_alias=True)

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON object it is written as (infinite scores stay `Infinity`)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any], **where: Any) -> Self:
        """The record from its JSON object plus the fields that say where it was found."""
        return cls.model_validate({**data, **where})

    def describe(self) -> str:
        """One line for the terminal, the logs and the report."""
        raise NotImplementedError
