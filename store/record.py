"""The one kind of record that passes between the pipeline's steps and to serving: a frozen
pydantic model that reads and writes the JSON file it is stored as.

Fields marked `Field(exclude=True)` say where a record was found (its folder, whether it was
reused) and stay out of its JSON. Every record file says the format it was written in
(`record_format`, conf/schema.py FORMAT): a file of another format is a StaleRecord, never read as
this version's; the registry alone reads its older versions, whose fields it still knows."""

from __future__ import annotations

from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict

from timedistill.conf import FORMAT
from timedistill.store.storage import Storage

FORMAT_KEY = "record_format"
R = TypeVar("R", bound="Record")


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


class StaleRecord(ValueError):
    """A record file written in another format than this version's."""


def write_record(storage: Storage, path: str, record: Record) -> None:
    """`record` as its JSON file, saying its format."""
    storage.write_json(path, {FORMAT_KEY: FORMAT, **record.to_json()})


def read_record(storage: Storage, path: str, kind: type[R], *, formats: tuple[int, ...] = (FORMAT,),
                **where: Any) -> R:
    """The record in the file at `path`, if it was written in one of `formats` (files from before
    formats were written are format 1)."""
    data = storage.read_json(path)
    found = data.pop(FORMAT_KEY, 1) if isinstance(data, dict) else None
    if found not in formats:
        raise StaleRecord(f"{storage.uri(path)} was written in format {found}; this version reads format "
                          f"{FORMAT}: run the step that made it again")
    return kind.from_json(data, **where)
