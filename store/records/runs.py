"""One run of the pipeline: runs/<name>/<run-id>/metrics.json and `timedistill retrain --json`."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from timedistill.store.record import Record
from timedistill.store.records.caches import Cache
from timedistill.store.records.registry import Registration
from timedistill.store.records.results import ResultRow
from timedistill.store.records.students import StudentsRun
from timedistill.store.records.teachers import Teacher, TeacherChoice, TeacherSet

RUN_CONFIG = "config.yaml"  # runs/<name>/<run-id>/config.yaml: the whole config a run used


class StepTime(Record):
    """How long one step of a run took (horizons that ran at once counted once)."""

    cached: bool  # every part of the step (every horizon) was reused
    seconds: float


class CacheUse(Record):
    """How a run used the teacher caches (`distill --json`)."""

    hit: bool  # every horizon's cache was reused
    teacher_forward_batches: int  # what the run ran: building caches, and the teacher run online
    path: str | list[str]  # one URI per horizon
    bytes: int

    def describe(self) -> str:
        paths = self.path if isinstance(self.path, str) else ", ".join(self.path)
        return (f"teacher cache {'reused' if self.hit else 'built'}: {paths} ({self.bytes / 2**20:.1f} MiB); "
                f"teacher batches run: {self.teacher_forward_batches}")


class RunSummary(Record):
    """One run of the pipeline: runs/<name>/<run-id>/metrics.json and `retrain --json`. Written,
    never read back (the records it holds are read from their own files)."""

    dataset: str
    run_dir: str  # a URI
    run_id: str
    data_fingerprint: str
    steps: dict[str, StepTime]
    results: list[ResultRow]
    models: list[Registration]
    caches: list[Cache]
    teachers: list[Teacher]
    # teacher.name auto: per horizon, every candidate's scores and the pick
    teacher_choices: list[TeacherChoice] = Field(default_factory=list)
    teacher_sets: list[TeacherSet] = Field(default_factory=list)  # teacher.names: per horizon
    students: list[StudentsRun] = Field(exclude=True)
    config: dict[str, Any]
    root: str = Field(exclude=True)  # the storage root as a URI

    def uri(self, path: str) -> str:
        return f"{self.root}/{path}"

    def cache_use(self) -> CacheUse:
        online = sum(run.teacher_forward_batches for run in self.students if not run.cached)
        paths = [self.uri(cache.directory) for cache in self.caches]
        return CacheUse(hit=bool(self.caches) and all(cache.cached for cache in self.caches),
                        teacher_forward_batches=sum(cache.forward_batches_run for cache in self.caches) + online,
                        path=paths[0] if len(paths) == 1 else paths, bytes=sum(cache.bytes for cache in self.caches))

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "run_dir": self.run_dir, "run_id": self.run_id,
            "data_fingerprint": self.data_fingerprint,
            "steps": {name: step.to_json() for name, step in self.steps.items()},
            "results": [row.to_json() for row in self.results],
            "models": [registration.to_json() for registration in self.models],
            "cache": [cache.to_json() | {"hit": cache.cached, "path": self.uri(cache.directory)}
                      for cache in self.caches],
            "teachers": [teacher.model_dump(mode="json", exclude={"history"}) | {"cached": teacher.cached}
                         for teacher in self.teachers],
            **({"teacher_choices": [choice.to_json() for choice in self.teacher_choices]}
               if self.teacher_choices else {}),
            **({"teacher_sets": [ensemble.to_json() for ensemble in self.teacher_sets]} if self.teacher_sets else {}),
            "config": self.config,
        }

    def describe(self) -> str:
        return f"{self.dataset} run {self.run_id}: {len(self.results)} horizon(s), {self.run_dir}"
