"""The pipeline's steps behind one small object, so that the step commands (`timedistill
teacher`, `distill`) and the Prefect flow call exactly the same functions in the same order."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import ray

from conf import Config, storage_root
from tasks import loops
from tasks.cache import Cache, build_cache
from tasks.errors import StepError
from tasks.evaluate import result_row
from tasks.ingest import Dataset, ingest
from tasks.progress import Listener
from tasks.runtime import ray_session
from tasks.storage import Storage
from tasks.students import Students, train_students
from tasks.teacher import Teacher, find_teacher, load_standardized, train_teacher


class Pipeline:
    """One run of the pipeline over one config: storage, the Ray session (started on first use),
    the ingested dataset and the standardized series in the object store (put once)."""

    def __init__(self, config: Config, *, ray_address: str | None = None, quiet: bool = True) -> None:
        self.config = config
        self.storage = Storage(storage_root(config), config.storage.endpoint_override)
        self.ray_address, self.quiet = ray_address, quiet
        self._stack = ExitStack()
        self._dataset: Dataset | None = None
        self._series_ref: ray.ObjectRef | None = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._series_ref = None
        self._stack.close()

    # ---- state -------------------------------------------------------------------------------
    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            raise StepError("the dataset has not been ingested yet")
        return self._dataset

    @property
    def run_dir(self) -> str:
        return f"runs/{self.dataset.name}/{self.config.run_id(self.dataset.fingerprint)}"

    def series_ref(self) -> ray.ObjectRef:
        """Ray: the standardized series, put in the object store once per pipeline."""
        self.ensure_ray()
        if self._series_ref is None:
            self._series_ref = ray.put(load_standardized(self.storage, self.dataset))
        return self._series_ref

    def ensure_ray(self) -> None:
        if not ray.is_initialized():
            self._stack.enter_context(ray_session(self.config, self.ray_address, quiet=self.quiet))

    # ---- steps -------------------------------------------------------------------------------
    def ingest(self) -> Dataset:
        self._dataset = ingest(self.config, self.storage)
        return self._dataset

    def teacher(self, horizon: int, *, on_event: Listener | None = None, fault: loops.Fault | None = None) -> Teacher:
        found = find_teacher(self.config, self.storage, self.dataset, horizon)
        if found is not None:
            return found
        return train_teacher(self.config, self.storage, self.dataset, horizon, series_ref=self.series_ref(),
                             on_event=on_event, fault=fault)

    def require_teacher(self, horizon: int) -> Teacher:
        found = find_teacher(self.config, self.storage, self.dataset, horizon)
        if found is None:
            raise StepError(f"no trained {self.config.teacher.name} teacher for {self.dataset.name} at horizon "
                            f"{horizon} under {self.storage.uri('teachers')}: run `timedistill teacher` with "
                            "the same config first")
        return found

    def cache(self, teacher: Teacher) -> Cache | None:
        if not self.config.distill.use_cache:
            return None
        from tasks.cache import find_cache

        found = find_cache(self.config, self.storage, self.dataset, teacher)
        if found is not None:
            return found
        return build_cache(self.config, self.storage, self.dataset, teacher, series_ref=self.series_ref())

    def students(self, teacher: Teacher, cache: Cache | None, *, on_event: Listener | None = None,
                 fault: loops.Fault | None = None) -> Students:
        from tasks.students import find_students

        found = find_students(self.storage, self.run_dir, teacher.meta["horizon"])
        if found is not None:
            return found
        return train_students(self.config, self.storage, self.dataset, teacher, cache, self.run_dir,
                              series_ref=self.series_ref(), on_event=on_event, fault=fault)

    def evaluate(self, teacher: Teacher, students: Students) -> dict[str, Any]:
        return result_row(self.dataset.name, teacher, students)


def cache_summary(storage: Storage, caches: list[Cache], trained: list[Students]) -> dict[str, Any]:
    """The `cache` record of `distill --json`: hit only when every horizon's cache was reused;
    teacher batches count what this call ran: building caches, and the teacher run online."""
    online = sum(s.meta["teacher_forward_batches"] for s in trained if not s.cached)
    return {
        "hit": bool(caches) and all(c.hit for c in caches),
        "teacher_forward_batches": sum(c.teacher_forward_batches for c in caches) + online,
        "path": storage.uri(caches[0].directory) if len(caches) == 1 else [storage.uri(c.directory) for c in caches],
        "bytes": sum(c.meta["bytes"] for c in caches),
    }
