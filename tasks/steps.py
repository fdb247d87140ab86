"""The pipeline's steps as typed functions. Each takes the records it needs and returns the record
that is the whole input of the next:

    ingest_step(run)                                  -> Dataset
    teacher_step(run, dataset, horizon)               -> HorizonTeachers   (trained, sources, weights, chosen)
    cache_step(run, dataset, teachers)                -> HorizonCaches     (None: the teachers run online)
    distill_step(run, dataset, teachers, caches)      -> StudentsRun
    evaluate_step(run, dataset, teachers, students)   -> Evaluation
    register_step(run, dataset, students, row)        -> Registration

Each finds its output in storage (keyed by what it depends on) or makes it. What they share is
the run's context (RunContext: the config, storage, Ray, the series in Ray's object store), never
each other's state. The retrain flow (flows/retrain.py) calls them in order; the step commands
run the same flow body with a stopping point.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime

import ray
import yaml

from timedistill.conf import Config, storage_root
from timedistill.store.record import write_record
from timedistill.store.records import (
    RUN_CONFIG,
    Cache,
    Dataset,
    Evaluation,
    HorizonCaches,
    HorizonTeachers,
    Registration,
    ResultRow,
    RunSummary,
    StepTime,
    StudentsRun,
    Teacher,
)
from timedistill.store.series import standardized_series
from timedistill.store.storage import Storage
from timedistill.tasks import loops
from timedistill.tasks.cache import build_cache, find_cache
from timedistill.tasks.errors import StepError
from timedistill.tasks.evaluate import evaluate
from timedistill.tasks.events import Terminal
from timedistill.tasks.ingest import ingest
from timedistill.tasks.registry import register
from timedistill.tasks.runtime import ray_session
from timedistill.tasks.students import find_students, train_students
from timedistill.tasks.students import warm_base as students_warm_base
from timedistill.tasks.teacher import find_teacher, horizon_teachers, member_configs, train_teacher
from timedistill.tasks.teacher import warm_base as teacher_warm_base

STEPS = ("ingest", "teacher", "cache", "distill", "evaluate", "register")


class RunContext:
    """Where one run of the pipeline works: its config and storage, the Ray session (started on
    first use, stopped with the run) and the standardized series in Ray's object store (put once).
    It holds no step's output: those are the steps' records."""

    def __init__(self, config: Config, *, ray_address: str | None = None, quiet: bool = True,
                 listener: Terminal | None = None, train_teachers: bool = True) -> None:
        self.config = config
        self.storage = Storage(storage_root(config), config.storage.endpoint_override)
        self.ray_address, self.quiet, self.listener = ray_address, quiet, listener
        self.train_teachers = train_teachers  # False: a teacher must already be trained
        # teacher.refresh: always keys this run's teachers and students by when it started
        self.salt = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f") if config.teacher.refresh == "always" else None
        self._stack = ExitStack()
        self._series: tuple[str, ray.ObjectRef] | None = None  # (data fingerprint, the series)

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self._series = None
        self._stack.close()

    def ensure_ray(self) -> None:
        """Ray, started (or connected) on first use and stopped with the run."""
        if not ray.is_initialized():
            dashboard = self._stack.enter_context(ray_session(self.config, self.ray_address, quiet=self.quiet))
            if dashboard and self.listener is not None:
                self.listener.note(f"Ray dashboard: http://{dashboard}")

    def series(self, dataset: Dataset) -> ray.ObjectRef:
        """Ray: the standardized series, put in the object store once per run."""
        self.ensure_ray()
        if self._series is None or self._series[0] != dataset.fingerprint:
            self._series = (dataset.fingerprint, ray.put(standardized_series(self.storage, dataset)))
        return self._series[1]

    def run_id(self, dataset: Dataset) -> str:
        return self.config.run_id(dataset.fingerprint, self.salt)

    def run_dir(self, dataset: Dataset) -> str:
        return f"runs/{dataset.name}/{self.run_id(dataset)}"


def ingest_step(run: RunContext) -> Dataset:
    """The dataset; the run's whole config is written into its run folder as soon as the run has
    one (the run id needs the data's fingerprint)."""
    dataset = ingest(run.config, run.storage)
    run.storage.write_bytes(f"{run.run_dir(dataset)}/{RUN_CONFIG}",
                            yaml.safe_dump(run.config.public(), sort_keys=False).encode())
    return dataset


def teacher_step(run: RunContext, dataset: Dataset, horizon: int, *,
                 callbacks: Sequence[loops.Callback] = ()) -> HorizonTeachers:
    """The teachers of one horizon: the one configured, every candidate of teacher.name auto, or
    every member of teacher.names, each trained or reused by its own key (as if named alone)."""
    trained = [_teacher(run, config, dataset, horizon, callbacks) for config in
               member_configs(run.config, dataset, horizon)]
    return horizon_teachers(run.config, trained)


def _teacher(run: RunContext, config: Config, dataset: Dataset, horizon: int,
             callbacks: Sequence[loops.Callback]) -> Teacher:
    teacher = find_teacher(config, run.storage, dataset, horizon, run.salt)
    if teacher is not None:
        return teacher
    if not run.train_teachers:
        raise StepError(f"no trained {config.teacher.name} teacher for {dataset.name} at horizon {horizon} under "
                        f"{run.storage.uri('teachers')}: run `timedistill teacher` with the same config first")
    base = teacher_warm_base(config, run.storage, dataset, horizon) if config.teacher.refresh == "warm" else None
    return train_teacher(config, run.storage, dataset, horizon, series=run.series(dataset), salt=run.salt, base=base,
                         listener=run.listener, callbacks=callbacks)


def cache_step(run: RunContext, dataset: Dataset, teachers: HorizonTeachers) -> HorizonCaches | None:
    """The caches of the teachers a student learns from; None when distillation runs them online."""
    if not run.config.distill.use_cache:
        return None
    return HorizonCaches(horizon=teachers.horizon,
                         caches=[_cache(run, dataset, teacher) for teacher in teachers.sources])


def _cache(run: RunContext, dataset: Dataset, teacher: Teacher) -> Cache:
    cache = find_cache(run.config, run.storage, dataset, teacher)
    if cache is None:
        run.ensure_ray()
        cache = build_cache(run.config, run.storage, dataset, teacher)
    return cache


def distill_step(run: RunContext, dataset: Dataset, teachers: HorizonTeachers, caches: HorizonCaches | None, *,
                 callbacks: Sequence[loops.Callback] = ()) -> StudentsRun:
    """The student of one horizon, distilled from its teachers, and the baseline beside it."""
    run_dir = run.run_dir(dataset)
    students = find_students(run.storage, run_dir, teachers.horizon)
    if students is not None:
        return students
    config = run.config
    base = students_warm_base(config, run.storage, dataset, teachers.horizon) if config.distill.warm_start else None
    return train_students(
        config, run.storage, dataset, teachers.sources,
        caches.caches if caches is not None else [None] * len(teachers.sources), run_dir,
        series=run.series(dataset), weights=teachers.weights, base=base, listener=run.listener, callbacks=callbacks)


def evaluate_step(run: RunContext, dataset: Dataset, teachers: list[HorizonTeachers],
                  students: list[StudentsRun]) -> Evaluation:
    """Teacher vs student vs MLP per horizon on the test split, and the run's reports."""
    return evaluate(run.storage, dataset, run.run_dir(dataset), run.run_id(dataset), [t.chosen for t in teachers],
                    students, [t.choice for t in teachers if t.choice is not None],
                    {t.horizon: t.ensemble for t in teachers if t.ensemble is not None})


def register_step(run: RunContext, dataset: Dataset, students: StudentsRun, row: ResultRow) -> Registration:
    """The student of one horizon in the registry, if the config's gate lets it in."""
    return register(run.config, run.storage, dataset, students, row, run.run_id(dataset))


def summarize(run: RunContext, dataset: Dataset, steps: dict[str, StepTime], teachers: list[HorizonTeachers],
              caches: Sequence[HorizonCaches | None] = (), students: Sequence[StudentsRun] = (),
              evaluation: Evaluation | None = None, registrations: Sequence[Registration] = ()) -> RunSummary:
    """What the run did, from its steps' records (listed by horizon, however the horizons ran);
    written to the run folder's metrics.json when the run went as far as registration."""
    run_dir = run.run_dir(dataset)
    teachers = sorted(teachers, key=lambda t: t.horizon)
    summary = RunSummary(
        dataset=dataset.name, run_dir=run.storage.uri(run_dir), run_id=run.run_id(dataset),
        data_fingerprint=dataset.fingerprint, steps=steps, results=evaluation.rows if evaluation else [],
        models=list(registrations),
        caches=[cache for horizon in sorted((c for c in caches if c), key=lambda c: c.horizon)
                for cache in horizon.caches],
        teachers=[t.chosen.model_copy(update={"cached": t.cached}) for t in teachers],
        teacher_choices=[t.choice for t in teachers if t.choice is not None],
        teacher_sets=[t.ensemble for t in teachers if t.ensemble is not None],
        students=sorted(students, key=lambda s: s.horizon), config=run.config.public(), root=run.storage.uri())
    if registrations:
        write_record(run.storage, f"{run_dir}/metrics.json", summary)
    return summary
