"""The pipeline's steps behind one object: each finds its output in storage (keyed by what it
depends on) or makes it, and returns its record. The retrain flow (flows/retrain.py) calls them
in order; the step commands run the same flow body with a stopping point."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import ray
import yaml

from timedistill.conf import AUTO, Config, storage_root
from timedistill.store.records import (
    RUN_CONFIG,
    Cache,
    Dataset,
    Evaluation,
    Registration,
    ResultRow,
    RunSummary,
    StepTime,
    StudentsRun,
    Teacher,
    TeacherChoice,
    TeacherSet,
)
from timedistill.store.storage import Storage
from timedistill.tasks import loops
from timedistill.tasks.cache import build_cache, find_cache
from timedistill.tasks.errors import StepError
from timedistill.tasks.evaluate import evaluate
from timedistill.tasks.events import Event
from timedistill.tasks.ingest import ingest
from timedistill.tasks.registry import register
from timedistill.tasks.runtime import parallel_runs, ray_session, run_concurrently
from timedistill.tasks.students import find_students, train_students
from timedistill.tasks.students import warm_base as students_warm_base
from timedistill.tasks.teacher import find_teacher, member_configs, train_teacher
from timedistill.tasks.teacher import warm_base as teacher_warm_base

STEPS = ("ingest", "teacher", "cache", "distill", "evaluate", "register")
Result = TypeVar("Result")


class StepResult(Protocol):
    """What every step returns: a record that knows whether it was reused and describes itself."""

    @property
    def cached(self) -> bool: ...

    def describe(self) -> str: ...


class Terminal(Protocol):
    """Where a run in this process shows its progress (flows/progress.py): the workers' events
    and each finished step."""

    def __call__(self, event: Event) -> None: ...

    def step(self, name: str, seconds: float, cached: bool, detail: str) -> None: ...

    def note(self, text: str) -> None: ...


class StepLog:
    """How long each step took and whether it was reused, folded over the horizons: a step
    counts as cached only when every horizon's part of it was, and its time is the wall time its
    parts covered (horizons that ran at once count once)."""

    def __init__(self, on_step: Callable[[str, float, bool, str], None] | None = None) -> None:
        self.on_step = on_step
        self._spans: dict[str, list[tuple[float, float]]] = {}  # step -> (start, end) of each part
        self._cached: dict[str, bool] = {}
        self._lock = threading.Lock()  # horizons in parallel record from threads of their own

    def record(self, name: str, seconds: float, result: StepResult | None) -> None:
        """A part of step `name` that ended now, after `seconds`. `result` None: the step had
        nothing to do (the cache step without distill.use_cache)."""
        cached, end = result is None or result.cached, time.perf_counter()
        with self._lock:
            self._spans.setdefault(name, []).append((end - seconds, end))
            self._cached[name] = self._cached.get(name, True) and cached
        if self.on_step is not None:
            self.on_step(name, seconds, cached, result.describe() if result is not None else "skipped")

    def times(self) -> dict[str, StepTime]:
        with self._lock:
            return {name: StepTime(cached=self._cached[name], seconds=round(covered(self._spans[name]), 3))
                    for name in STEPS if name in self._spans}


def covered(spans: list[tuple[float, float]]) -> float:
    """The length of the union of the (start, end) spans."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class Pipeline:
    """One run of the pipeline over one config: storage, the Ray session (started on first use),
    the standardized series in the object store (put once), and the records each step made."""

    def __init__(self, config: Config, *, ray_address: str | None = None, quiet: bool = True,
                 terminal: Terminal | None = None, train_teachers: bool = True) -> None:
        self.config = config
        self.storage = Storage(storage_root(config), config.storage.endpoint_override)
        self.ray_address, self.quiet, self.terminal = ray_address, quiet, terminal
        self.train_teachers = train_teachers  # False: a teacher must already be trained
        # teacher.refresh: always keys this run's teachers and students by when it started
        self.salt = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f") if config.teacher.refresh == "always" else None
        self.log = StepLog(terminal.step if terminal is not None else None)
        self._stack = ExitStack()
        self._series: ray.ObjectRef | None = None
        self._dataset: Dataset | None = None
        self.teachers: list[Teacher] = []
        self.teacher_choices: list[TeacherChoice] = []
        self.teacher_sets: dict[int, TeacherSet] = {}  # teacher.names: per horizon
        self.member_caches: dict[int, list[Cache]] = {}  # and each member's cache
        self.caches: list[Cache] = []
        self.students_runs: list[StudentsRun] = []
        self.evaluation: Evaluation | None = None
        self.registrations: list[Registration] = []

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._series = None
        self._stack.close()

    # ---- state -------------------------------------------------------------------------------
    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            raise StepError("the dataset has not been ingested yet")
        return self._dataset

    @property
    def run_id(self) -> str:
        return self.config.run_id(self.dataset.fingerprint, self.salt)

    @property
    def run_dir(self) -> str:
        return f"runs/{self.dataset.name}/{self.run_id}"

    def ensure_ray(self) -> None:
        """Ray, started (or connected) on first use and stopped with the pipeline."""
        if not ray.is_initialized():
            dashboard = self._stack.enter_context(ray_session(self.config, self.ray_address, quiet=self.quiet))
            if dashboard and self.terminal is not None:
                self.terminal.note(f"Ray dashboard: http://{dashboard}")

    def map(self, step: Callable[..., Result], *columns: Sequence[Any]) -> list[Result]:
        """`step(self, *row)` for every row of `columns` (one row per horizon), in the rows' order:
        one after another, or, where the Ray cluster has room for several training runs
        (`ray.parallel_runs`), that many at once, each in a thread of its own."""
        rows = list(zip(*columns, strict=True))
        runs = parallel_runs(self.config, len(rows), self.ray_address, connect=self.ensure_ray)
        if runs == 1:
            return [step(self, *row) for row in rows]
        self.series()  # the series in the object store before the threads share it
        return run_concurrently([functools.partial(step, self, *row) for row in rows], runs, self.storage.uri())

    def series(self) -> ray.ObjectRef:
        """Ray: the standardized series, put in the object store once per pipeline."""
        self.ensure_ray()
        if self._series is None:
            self._series = ray.put(self.dataset.standardized(self.storage))
        return self._series

    # ---- steps -------------------------------------------------------------------------------
    def ingest(self) -> Dataset:
        """The dataset; the run's whole config is written into its run folder as soon as the run
        has one (the run id needs the data's fingerprint)."""
        self._dataset = ingest(self.config, self.storage)
        config = yaml.safe_dump(self.config.public(), sort_keys=False).encode()
        self.storage.write_bytes(f"{self.run_dir}/{RUN_CONFIG}", config)
        return self._dataset

    def teacher(self, horizon: int, *, callbacks: Sequence[loops.Callback] = ()) -> Teacher:
        """The teacher of one horizon. With teacher.name auto, every candidate is trained and the
        one with the lowest validation MSE is returned; with teacher.names, every teacher is trained
        and the best of them is returned (the others wait in `teacher_sets` for the distill step).
        Either is reused only when every member was."""
        members = [self._teacher(config, horizon, callbacks)
                   for config in member_configs(self.config, self.dataset, horizon)]
        teacher, note = members[0], None
        if self.config.teacher.name == AUTO:
            teacher, choice = TeacherChoice.of(members)
            self.teacher_choices.append(choice)
            note = choice.describe()
        elif len(members) > 1:
            ensemble = TeacherSet.of(members, self.config.distill.teacher_weighting)
            self.teacher_sets[horizon] = ensemble
            teacher, note = ensemble.primary, ensemble.describe()
        if note is not None:
            teacher = teacher.model_copy(update={"cached": all(member.cached for member in members)})
            if self.terminal is not None:
                self.terminal.note(note)
        self.teachers.append(teacher)
        return teacher

    def _teacher(self, config: Config, horizon: int, callbacks: Sequence[loops.Callback]) -> Teacher:
        teacher = find_teacher(config, self.storage, self.dataset, horizon, self.salt)
        if teacher is None and not self.train_teachers:
            raise StepError(f"no trained {config.teacher.name} teacher for {self.dataset.name} at horizon "
                            f"{horizon} under {self.storage.uri('teachers')}: run `timedistill teacher` with "
                            "the same config first")
        if teacher is None:
            warm = config.teacher.refresh == "warm"
            teacher = train_teacher(
                config, self.storage, self.dataset, horizon, series=self.series(), salt=self.salt,
                base=teacher_warm_base(config, self.storage, self.dataset, horizon) if warm else None,
                listener=self.terminal, callbacks=callbacks)
        return teacher

    def cache(self, teacher: Teacher) -> Cache | None:
        """The teacher's cache (with teacher.names, every member's is made and the best one's is
        returned); None when distillation runs the teachers online."""
        if not self.config.distill.use_cache:
            return None
        ensemble = self.teacher_sets.get(teacher.horizon)
        caches = [self._cache(member) for member in (ensemble.members if ensemble else [teacher])]
        self.caches.extend(caches)
        if ensemble is None:
            return caches[0]
        self.member_caches[teacher.horizon] = caches
        best = next(cache for cache in caches if cache.teacher_dir == teacher.directory)
        return best.model_copy(update={"cached": all(cache.cached for cache in caches)})

    def _cache(self, teacher: Teacher) -> Cache:
        cache = find_cache(self.config, self.storage, self.dataset, teacher)
        if cache is None:
            self.ensure_ray()
            cache = build_cache(self.config, self.storage, self.dataset, teacher)
        return cache

    def students(self, teacher: Teacher, cache: Cache | None, *,
                 callbacks: Sequence[loops.Callback] = ()) -> StudentsRun:
        """The student of one horizon, distilled from its teacher (or, with teacher.names, from
        every member of the horizon's teacher set), and the baseline."""
        students = find_students(self.storage, self.run_dir, teacher.horizon)
        if students is None:
            warm = self.config.distill.warm_start
            ensemble = self.teacher_sets.get(teacher.horizon)
            teachers = ensemble.members if ensemble else [teacher]
            caches = self.member_caches.get(teacher.horizon, [cache]) if cache else [None] * len(teachers)
            students = train_students(
                self.config, self.storage, self.dataset, teachers, caches, self.run_dir, series=self.series(),
                weights=ensemble.weights if ensemble else [1.0],
                base=students_warm_base(self.config, self.storage, self.dataset, teacher.horizon) if warm else None,
                listener=self.terminal, callbacks=callbacks)
        self.students_runs.append(students)
        return students

    def evaluate(self, teachers: list[Teacher], students: list[StudentsRun]) -> Evaluation:
        self.evaluation = evaluate(self.storage, self.dataset, self.run_dir, self.run_id, teachers, students,
                                   self.teacher_choices, self.teacher_sets)
        return self.evaluation

    def register(self, students: StudentsRun, row: ResultRow) -> Registration:
        registration = register(self.config, self.storage, self.dataset, students, row, self.run_id)
        self.registrations.append(registration)
        return registration

    def finish(self) -> RunSummary:
        """What this run did, from the records its steps made; written to the run folder's
        metrics.json when the run went all the way (registration included). Records are listed
        by horizon, however the horizons ran."""
        for records in (self.teachers, self.teacher_choices, self.caches, self.students_runs):
            records.sort(key=lambda record: record.horizon)
        summary = RunSummary(
            dataset=self.dataset.name, run_dir=self.storage.uri(self.run_dir), run_id=self.run_id,
            data_fingerprint=self.dataset.fingerprint, steps=self.log.times(),
            results=self.evaluation.rows if self.evaluation else [], models=self.registrations, caches=self.caches,
            teachers=self.teachers, teacher_choices=self.teacher_choices,
            teacher_sets=list(self.teacher_sets.values()), students=self.students_runs,
            config=self.config.public(), root=self.storage.uri())
        if self.registrations:
            self.storage.write_json(f"{self.run_dir}/metrics.json", summary.to_json())
        return summary

