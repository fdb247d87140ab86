"""The retrain flow: the whole pipeline as one Prefect flow that people schedule.

    ingest -> teacher -> cache -> distill (+ baseline) -> evaluate -> register

Every step is idempotent and keyed by a fingerprint of its inputs, kept in the artifact store
itself (datasets/, teachers/, cache/, runs/, registry/): a re-run with unchanged data and config
finds each step's complete output and skips it, changed data changes the fingerprints of
everything downstream. Keeping the keys in the store (not in Prefect's result cache) makes the
step commands, the flow and every machine of a cluster agree on what is done, so the Prefect
tasks run with NO_CACHE. Steps that can fail for transient reasons (I/O, a lost Ray worker or
connection) are retried with exponential backoff; each writes atomically, so a failed attempt
leaves nothing half written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from timedistill.conf import load_config
from timedistill.flows.steps import for_each_horizon, recording, step
from timedistill.store.records import Evaluation, RunSummary
from timedistill.tasks.events import EpochFinished, Event, Terminal
from timedistill.tasks.steps import (
    RunContext,
    cache_step,
    distill_step,
    evaluate_step,
    ingest_step,
    register_step,
    summarize,
    teacher_step,
)

Stop = Literal["teacher", "evaluate", "register"]

# The terminal of `timedistill` commands run in this process; flow parameters must stay
# JSON-serializable for deployments, so it travels beside them.
_terminal: ContextVar[Terminal | None] = ContextVar("timedistill_terminal", default=None)
_quiet: ContextVar[bool] = ContextVar("timedistill_quiet", default=True)


@contextmanager
def progress(terminal: Terminal | None, quiet: bool = True) -> Iterator[None]:
    """Show the flow runs of this process on `terminal` (worker events, finished steps); `quiet`
    keeps Ray's own logs off it."""
    tokens = _terminal.set(terminal), _quiet.set(quiet)
    try:
        yield
    finally:
        _terminal.reset(tokens[0])
        _quiet.reset(tokens[1])


def publish_report(task: Any, task_run: Any, state: Any) -> None:
    """Prefect hook of the evaluate step: the report, the results as a table, and links to the
    plots, as artifacts of the run (what the Prefect UI shows of it)."""
    evaluation: Evaluation = state.result()
    key = artifact_key(evaluation.dataset)
    create_markdown_artifact(evaluation.markdown, key=key, description=f"timedistill results, run {evaluation.run_id}")
    create_table_artifact([{"horizon": row.horizon, "model": role, "name": score.name, "test_mse": score.test_mse,
                            "test_mae": score.test_mae, "params": score.params}
                           for row in evaluation.rows for role, score in row.scores().items()],
                          key=f"{key}-table", description="test scores (standardized), per horizon and model")
    for name in ("forecast.png", "training.png"):
        create_link_artifact(f"{evaluation.run_dir}/{name}", link_text=name, key=f"{key}-{name.split('.')[0]}",
                             description=f"{name} of run {evaluation.run_id}")


class RunLog:
    """Where a flow run shows its progress: the run's log (every run, scheduled ones too), and
    the terminal of the command that started it, if there is one."""

    def __init__(self, terminal: Terminal | None, logger: Any) -> None:
        self.terminal, self.logger = terminal, logger

    def __call__(self, event: Event) -> None:
        if isinstance(event, EpochFinished):
            self.logger.info("%s", event.describe())
        if self.terminal is not None:
            self.terminal(event)

    def step(self, name: str, seconds: float, cached: bool, detail: str) -> None:
        if self.terminal is not None:
            self.terminal.step(name, seconds, cached, detail)

    def note(self, text: str) -> None:
        self.logger.info("%s", text)
        if self.terminal is not None:
            self.terminal.note(text)


def artifact_key(name: str) -> str:
    return "timedistill-" + re.sub(r"[^a-z0-9-]", "-", name.lower())


ingest = step("ingest", ingest_step)
train_teacher = step("teacher", teacher_step)
cache_teacher = step("cache", cache_step)
distill = step("distill", distill_step)
evaluate = step("evaluate", evaluate_step, retries=1, retry_condition_fn=None, on_completion=[publish_report])
register = step("register", register_step)


@flow(name="timedistill-retrain", log_prints=True)
def retrain(config: str = "smoke", overrides: list[str] | None = None, ray_address: str | None = None,
            stop_after: Stop = "register", train_teachers: bool = True) -> RunSummary:
    """Retrain teachers, distill students and register them, for one config. `stop_after` ends
    the run early (the step commands); `train_teachers=False` requires trained teachers."""
    settings = load_config(config, overrides or [])
    terminal, flow_run = _terminal.get(), FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:  # a Prefect run: progress goes to its log too
        terminal = RunLog(terminal, get_run_logger())
        terminal.note(f"Prefect flow run '{flow_run.flow_run.name}' of {retrain.name}")
    with (RunContext(settings, ray_address=ray_address, quiet=_quiet.get(), listener=terminal,
                     train_teachers=train_teachers) as run,
          recording(terminal.step if terminal is not None else None) as log):
        dataset = ingest(run)
        teachers = for_each_horizon(run, train_teacher, dataset, settings.data.horizons)
        if stop_after == "teacher":
            return summarize(run, dataset, log.times(), teachers)
        caches = for_each_horizon(run, cache_teacher, dataset, teachers)
        students = for_each_horizon(run, distill, dataset, teachers, caches)
        evaluation = evaluate(run, dataset, teachers, students)
        registrations = ([register(run, dataset, run_of_horizon, row)
                          for run_of_horizon, row in zip(students, evaluation.rows, strict=True)]
                         if stop_after == "register" else [])
        return summarize(run, dataset, log.times(), teachers, caches, students, evaluation, registrations)


def run_steps(config: str, overrides: list[str], ray_address: str | None = None, *, terminal: Terminal | None = None,
              quiet: bool = True, **stop: Any) -> RunSummary:
    """The flow's body without Prefect, so without its server: what the step commands (`teacher`,
    `distill`) and `timedistill.fit` run, up to `stop_after`."""
    with progress(terminal, quiet=quiet):
        return retrain.fn(config=config, overrides=overrides, ray_address=ray_address, **stop)


def deployment(config: str, cron: str, *, overrides: list[str] | None = None, name: str | None = None,
               ray_address: str | None = None) -> Any:
    """The retrain flow as a Prefect deployment with a cron schedule (what `timedistill schedule`
    serves, and what infra/prefect.yaml declares for `prefect deploy`)."""
    settings = load_config(config, overrides or [])
    return retrain.to_deployment(
        name=name or f"retrain-{settings.data.name}",
        cron=cron,
        parameters={"config": config, "overrides": overrides or [], "ray_address": ray_address},
        description=f"Retrain and distill {settings.data.name} ({settings.teacher.name} -> {settings.student.name})",
        tags=["timedistill", settings.data.name],
    )
