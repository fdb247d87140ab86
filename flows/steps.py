"""The pipeline's steps as the flow runs them. Each is a Prefect task inside a flow run (retried
when its failure is transient, its state named Skipped when it found its output done) and a plain
call outside one (the step commands); either way it is timed, its cached status recorded and its
result logged here, and nowhere else. Horizons run one after another, or several at once where
the Ray cluster has room for several training runs.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.states import Completed
from prefect.tasks import exponential_backoff
from ray.exceptions import RayActorError

from timedistill.store.records import Dataset, StepTime
from timedistill.tasks.runtime import parallel_runs, run_concurrently
from timedistill.tasks.steps import STEPS, RunContext

if TYPE_CHECKING:
    from prefect.states import State

TRANSIENT = (OSError, ConnectionError, TimeoutError, RayActorError)  # I/O, a lost Ray worker or connection


class StepResult(Protocol):
    """What every step returns: a record that knows whether it was reused and describes itself."""

    @property
    def cached(self) -> bool: ...

    def describe(self) -> str: ...


Result = TypeVar("Result", bound=StepResult | None)


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


_log: ContextVar[StepLog | None] = ContextVar("timedistill_step_log", default=None)


@contextmanager
def recording(on_step: Callable[[str, float, bool, str], None] | None) -> Iterator[StepLog]:
    """The log the steps of one run record into (threads of parallel horizons share it)."""
    log = StepLog(on_step)
    token = _log.set(log)
    try:
        yield log
    finally:
        _log.reset(token)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O and connection errors; a bad config or bad data fails at once."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


def step(name: str, function: Callable[..., Result], **options: Any) -> Callable[..., Result]:
    """`function` as a step of the pipeline named `name` (module docstring)."""
    options = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
               "retry_condition_fn": retry_transient, "cache_policy": NO_CACHE, **options}

    @wraps(function)
    def body(*args: Any, **kwargs: Any) -> Any:
        """The task's body: a step that found its output done ends in a state named Skipped."""
        result = function(*args, **kwargs)
        if result is None or result.cached:
            return Completed(data=result, name="Skipped",
                             message=f"reused: {result.describe()}" if result is not None else "nothing to do")
        return result

    as_task = task(name=name, **options)(body)

    @wraps(function)
    def run(*args: Any) -> Result:
        in_flow = FlowRunContext.get() is not None
        began = time.perf_counter()
        # in a flow run, a synchronous body: Prefect gives back its State, never a coroutine
        result = cast("State[Result]", as_task(*args, return_state=True)).result() if in_flow else function(*args)
        seconds = time.perf_counter() - began
        if (log := _log.get()) is not None:
            log.record(name, seconds, result)
        logger = get_run_logger() if in_flow else logging.getLogger("timedistill")
        state = "skipped" if result is None else "reused" if result.cached else f"done in {seconds:.1f}s"
        logger.info("%s %s%s", name, state, f": {result.describe()}" if result is not None else "")
        return result

    return run


def for_each_horizon(run: RunContext, horizon_step: Callable[..., Result], dataset: Dataset,
                     *columns: Sequence[Any]) -> list[Result]:
    """`horizon_step(run, dataset, *row)` for every row of `columns` (one row per horizon), in the
    rows' order: one after another, or, where the Ray cluster has room for several training runs
    (`ray.parallel_runs`), that many at once, each in a thread of its own."""
    rows = list(zip(*columns, strict=True))
    runs = parallel_runs(run.config, len(rows), run.ray_address, connect=run.ensure_ray)
    if runs == 1:
        return [horizon_step(run, dataset, *row) for row in rows]
    run.series(dataset)  # the series in the object store before the threads share it
    return run_concurrently([functools.partial(horizon_step, run, dataset, *row) for row in rows], runs,
                            run.storage.uri())
