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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from conf import load_config
from tasks.cache import Cache
from tasks.ingest import Dataset
from tasks.progress import Listener
from tasks.registry import Decision, register
from tasks.report import report_markdown, write_reports
from tasks.steps import Pipeline
from tasks.students import Students
from tasks.teacher import Teacher

STEPS = ("ingest", "teacher", "cache", "distill", "evaluate", "register")
TRANSIENT = (OSError, ConnectionError, TimeoutError)

# The terminal's progress listener (set by `timedistill retrain`); flow parameters must stay
# JSON-serializable for deployments, so it travels beside them.
_listener: ContextVar[Listener | None] = ContextVar("timedistill_listener", default=None)
_step_listener: ContextVar[Any] = ContextVar("timedistill_step_listener", default=None)
_quiet: ContextVar[bool] = ContextVar("timedistill_quiet", default=True)


@contextmanager
def progress(listener: Listener | None, on_step: Any = None, quiet: bool = True) -> Iterator[None]:
    """Terminal hooks for a flow run in this process: worker events, finished steps, and
    whether Ray's own logs stay off the terminal."""
    tokens = _listener.set(listener), _step_listener.set(on_step), _quiet.set(quiet)
    try:
        yield
    finally:
        _listener.reset(tokens[0])
        _step_listener.reset(tokens[1])
        _quiet.reset(tokens[2])


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O and connection errors; a bad config or bad data fails at once."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


RETRIES = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
           "retry_condition_fn": retry_transient, "cache_policy": NO_CACHE}


@task(name="ingest", **RETRIES)
def ingest_step(pipe: Pipeline) -> Dataset:
    dataset = pipe.ingest()
    state = "reused (same content and settings)" if dataset.cached else "ingested"
    get_run_logger().info("ingest: %s %s, %d rows x %d variables, fingerprint %s", state, dataset.name,
                          dataset.manifest["rows"], len(dataset.variables), dataset.fingerprint)
    return dataset


@task(name="teacher", **RETRIES)
def teacher_step(pipe: Pipeline, horizon: int) -> Teacher:
    teacher = pipe.teacher(horizon, on_event=_listener.get())
    get_run_logger().info("teacher h=%d: %s %s, val MSE %.4f, test MSE %.4f", horizon,
                          "reused" if teacher.cached else "trained", teacher.meta["name"],
                          teacher.meta["val_mse"], teacher.meta["test_mse"])
    return teacher


@task(name="cache", **RETRIES)
def cache_step(pipe: Pipeline, teacher: Teacher) -> Cache | None:
    cache = pipe.cache(teacher)
    if cache is not None:
        get_run_logger().info("cache h=%d: %s %s (%.1f MiB)", teacher.meta["horizon"],
                              "reused" if cache.hit else "built", cache.directory, cache.meta["bytes"] / 2**20)
    return cache


@task(name="distill", **RETRIES)
def distill_step(pipe: Pipeline, teacher: Teacher, cache: Cache | None) -> Students:
    students = pipe.students(teacher, cache, on_event=_listener.get())
    models = students.meta["models"]
    get_run_logger().info("distill h=%d: %s; student test MSE %.4f%s", teacher.meta["horizon"],
                          "reused" if students.cached else "trained", models["student"]["test_mse"],
                          f", baseline {models['baseline']['test_mse']:.4f}" if "baseline" in models else "")
    return students


@task(name="evaluate", retries=1, cache_policy=NO_CACHE)
def evaluate_step(pipe: Pipeline, pairs: list[tuple[Teacher, Students]]) -> list[dict[str, Any]]:
    rows = [pipe.evaluate(teacher, students) for teacher, students in pairs]
    run_id = pipe.config.run_id(pipe.dataset.fingerprint)
    write_reports(pipe.storage, pipe.run_dir, pipe.dataset, run_id, pairs, rows)
    markdown = report_markdown(pipe.dataset.name, run_id, rows)
    create_markdown_artifact(markdown, key=artifact_key(pipe.dataset.name),
                             description=f"timedistill results, run {run_id}")
    get_run_logger().info("evaluate: reports in %s", pipe.storage.uri(pipe.run_dir))
    return rows


@task(name="register", **RETRIES)
def register_step(pipe: Pipeline, students: Students, row: dict[str, Any]) -> Decision:
    decision = register(pipe.config, pipe.storage, pipe.dataset, students, row,
                        pipe.config.run_id(pipe.dataset.fingerprint))
    verdict = f"registered {decision.model} {decision.version}" if decision.registered else \
        f"not registered {decision.model}"
    get_run_logger().info("register: %s (%s)", verdict, decision.reason)
    return decision


@flow(name="timedistill-retrain", log_prints=True)
def retrain(config: str = "smoke", overrides: list[str] | None = None,
            ray_address: str | None = None) -> dict[str, Any]:
    """Retrain teachers, distill students and register them, for one config."""
    settings = load_config(config, overrides or [])
    steps = StepClock(_step_listener.get())
    with Pipeline(settings, ray_address=ray_address, quiet=_quiet.get()) as pipe:
        dataset = steps.run("ingest", lambda: ingest_step(pipe), cached=lambda d: d.cached)
        pairs, caches = [], []
        for horizon in settings.data.horizons:
            teacher = steps.run("teacher", lambda h=horizon: teacher_step(pipe, h), cached=lambda t: t.cached)
            cache = steps.run("cache", lambda t=teacher: cache_step(pipe, t), cached=lambda c: c is None or c.hit)
            students = steps.run("distill", lambda t=teacher, c=cache: distill_step(pipe, t, c),
                                 cached=lambda s: s.cached)
            pairs.append((teacher, students))
            caches.append(cache)
        rows = steps.run("evaluate", lambda: evaluate_step(pipe, pairs), cached=lambda _: False)
        decisions = [steps.run("register", lambda s=s, r=r: register_step(pipe, s, r),
                               cached=lambda d: not d.registered and d.version is not None)
                     for (_, s), r in zip(pairs, rows, strict=True)]
        summary = {
            "dataset": dataset.name, "run_dir": pipe.storage.uri(pipe.run_dir),
            "run_id": settings.run_id(dataset.fingerprint), "data_fingerprint": dataset.fingerprint,
            "steps": steps.summary(), "results": rows,
            "models": [model_record(pipe, d, r) for d, r in zip(decisions, rows, strict=True)],
            "cache": [c.meta | {"hit": c.hit, "path": pipe.storage.uri(c.directory)} for c in caches if c],
            "teachers": [strip_history(t.meta) | {"cached": t.cached} for t, _ in pairs],
            "config": settings.model_dump(mode="json"),
        }
        pipe.storage.write_json(f"{pipe.run_dir}/metrics.json", summary)
    return summary


class StepClock:
    """Times each step and folds the horizons together: a step counts as cached only when
    every horizon's part of it was."""

    def __init__(self, on_step: Any = None) -> None:
        self.on_step = on_step
        self.steps: dict[str, dict[str, Any]] = {}

    def run(self, name: str, body: Any, cached: Any) -> Any:
        began = time.perf_counter()
        result = body()
        seconds = time.perf_counter() - began
        was_cached = bool(cached(result))
        entry = self.steps.setdefault(name, {"cached": True, "seconds": 0.0})
        entry["cached"] = entry["cached"] and was_cached
        entry["seconds"] += seconds
        if self.on_step is not None:
            self.on_step(name, seconds, was_cached, result)
        return result

    def summary(self) -> dict[str, dict[str, Any]]:
        return {name: {"cached": self.steps[name]["cached"], "seconds": round(self.steps[name]["seconds"], 3)}
                for name in STEPS if name in self.steps}


def model_record(pipe: Pipeline, decision: Decision, row: dict[str, Any]) -> dict[str, Any]:
    return {"name": decision.model, "version": decision.version, "registered": decision.registered,
            "reason": decision.reason, "registry_path": decision.path,
            "metrics": {role: {k: row[role][k] for k in ("test_mse", "test_mae", "params", "latency_ms")}
                        for role in ("teacher", "student", "baseline") if role in row}}


def strip_history(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "history"}


def artifact_key(name: str) -> str:
    return "timedistill-" + re.sub(r"[^a-z0-9-]", "-", name.lower())


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
