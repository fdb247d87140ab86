"""Horizons in parallel: how many runs go at once, and the runner that keeps them in order (and
stops them on Ctrl-C).
The two-node run that shows horizons overlapping is in tests/test_cluster.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextvars import ContextVar
from pathlib import Path

import pytest

from timedistill.conf import load_config
from timedistill.flows.steps import covered
from timedistill.tasks.errors import Interrupted
from timedistill.tasks.runtime import parallel_runs, run_concurrently

where: ContextVar[str] = ContextVar("where", default="not carried")


def never_connect() -> None:
    raise AssertionError("Ray was started to decide something the config already says")


@pytest.mark.parametrize(("overrides", "runs", "expected"), [
    ([], 4, 1),  # a local Ray gives each run every CPU: one at a time
    (["ray.parallel_runs=1"], 4, 1),
    (["ray.parallel_runs=3"], 4, 3),
    (["ray.parallel_runs=3"], 2, 2),  # never more than there are horizons
    (["ray.cpus_per_worker=1"], 1, 1),  # one horizon
])
def test_what_the_config_decides_needs_no_ray(overrides, runs, expected, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert parallel_runs(load_config("smoke", overrides), runs, None, connect=never_connect) == expected


def test_sized_workers_on_a_cluster_ask_ray_what_is_free(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = load_config("smoke", ["ray.cpus_per_worker=1"])
    with pytest.raises(AssertionError, match="Ray was started"):
        parallel_runs(config, 2, "127.0.0.1:6379", connect=never_connect)


def test_calls_overlap_up_to_the_limit_and_come_back_in_order():
    running, most = [], []
    lock = threading.Lock()

    def call(index: int) -> tuple[int, str]:
        with lock:
            running.append(index)
            most.append(len(running))
        time.sleep(0.2 if index == 0 else 0.05)  # the first finishes last
        with lock:
            running.remove(index)
        return index, where.get()

    token = where.set("carried")
    try:
        results = run_concurrently([lambda i=i: call(i) for i in range(5)], 2, "root")
    finally:
        where.reset(token)
    assert results == [(i, "carried") for i in range(5)]  # in order, each with the caller's context
    assert max(most) == 2


def test_a_failure_is_raised_after_the_other_calls_finish():
    finished = []

    def fails() -> None:
        raise ValueError("horizon 96 failed")

    def works(index: int) -> int:
        time.sleep(0.1)
        finished.append(index)
        return index

    with pytest.raises(ValueError, match="horizon 96 failed"):
        run_concurrently([fails, lambda: works(1), lambda: works(2)], 2, "root")
    assert sorted(finished) == [1, 2]


def test_a_step_whose_horizons_overlap_counts_its_wall_time_once():
    assert covered([(0.0, 4.0), (1.0, 3.0), (2.0, 6.0)]) == 6.0  # two horizons at once, a third later
    assert covered([(0.0, 1.0), (2.0, 3.0)]) == 2.0  # one after the other: the sum
    assert covered([]) == 0.0


def wait_forever_in_training(config: dict) -> None:
    Path(config["started"]).touch()
    while True:
        time.sleep(0.1)


def test_an_interrupt_ends_the_training_run_in_flight_before_the_session_closes(ray_local, tmp_path):
    """Ctrl-C while a fit() waits in a thread: the run's controller is stopped and the thread
    has returned by the time Interrupted is raised, so ray.shutdown() never races with it."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.state import list_actors

    started = tmp_path / "started"
    trainer = TorchTrainer(wait_forever_in_training, train_loop_config={"started": str(started)},
                           scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name="interrupted", storage_path=str(tmp_path / "ray")))

    def interrupt_once_training() -> None:
        while not started.exists():
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    # Ctrl-C as the command line has it: pytest started in the background by a shell (`make test &`)
    # inherits SIGINT ignored, and the signal would never arrive
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_once_training, daemon=True).start()
    try:
        with pytest.raises(Interrupted, match="resume here"):
            run_concurrently([trainer.fit], 1, "resume here")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not [thread for thread in threading.enumerate() if thread.name == "timedistill-run"]
    context = ray_local.get_runtime_context()
    assert not list_actors(address=context.gcs_address, filters=[
        ("class_name", "=", "TrainController"), ("state", "=", "ALIVE"), ("job_id", "=", context.get_job_id())])
