"""Where the work runs: connect to a Ray cluster, or start a local one on demand."""

from __future__ import annotations

import contextvars
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

import ray
from ray._private import ray_constants

from timedistill.conf import Config
from timedistill.tasks import lifetime
from timedistill.tasks.errors import Interrupted, StepError

if TYPE_CHECKING:  # private: the type ray.init returns for a local start (ray 2.60), for a cast below
    from ray._private.worker import RayContext

log = logging.getLogger("timedistill")

# Train V2's preemption watcher polls for spot-instance drains: one more process that imports
# Ray Train on a laptop where nothing gets preempted. Clusters keep Ray's default.
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # see single_machine_node
STOP_WAIT_S = 2.0  # how long an interrupt waits for the runs in flight to end (stop_training_runs)
SHUTDOWN_WAIT_S = 2.0  # how long a stop waits for ray.shutdown() (which hangs once the GCS is gone)
RAY_CALLERS = {"timedistill-run", "timedistill-serve-shutdown"}  # our threads that wait in Ray calls
Result = TypeVar("Result")
_local_gcs: set[str] = set()  # the GCS addresses of the Rays this process started (is_local_ray)


def start_local_ray(*, num_cpus: int | None = None, quiet: bool = True) -> str | None:
    """A new Ray of our own on this machine, every port of it on loopback (single_machine_node).

    The dashboard is not optional for Ray Train (Train V2, the default of the Ray versions
    pyproject.toml allows): every fit starts a PlacementGroupCleaner that asks the state API
    (served by the dashboard) whether the controller still lives. Without it each lookup retries
    for a long time and every fit ends waiting for the cleaner to stop.
    The cleaner finds the API through RAY_ADDRESS or, failing that, the most recently started
    Ray on the machine, which may be another local Ray whose answer ("no such actor") makes it
    remove our placement group. So the GCS port is chosen here and RAY_ADDRESS pinned to it in
    the environment that Ray's processes inherit (and restored in ours). Returns the dashboard's
    address."""
    if quiet:  # Ray announces that it turned token authentication on: noise to our users
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    pinned = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{LOOPBACK}:{port}", **SINGLE_MACHINE_ENV}
    saved = {key: os.environ.get(key) for key in pinned}
    os.environ.update(pinned)
    try:
        with single_machine_node():
            context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=LOOPBACK,
                               logging_level=logging.WARNING, log_to_driver=not quiet)
        _local_gcs.add(ray.get_runtime_context().gcs_address)
        # ray.init is typed as returning a BaseContext; a local start returns a RayContext
        session_dir = cast("RayContext", context).address_info["session_dir"]
        if session_dir is None:
            raise RuntimeError("the local Ray reports no session folder")
        lifetime.note_ray_session(session_dir)
        return context.dashboard_url or None
    finally:
        for key, previous in saved.items():
            if previous is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = previous


@contextmanager
def single_machine_node() -> Iterator[None]:
    """Start Ray's node on 127.0.0.1, so that every port it opens listens on loopback only.

    A node's listeners (GCS, raylet, workers, the dashboard agent, its metrics exporter, the
    runtime-env agent) bind to the node's address, or to every interface when that address is
    not loopback. On Linux, Ray replaces an asked-for 127.0.0.1 with the machine's network
    address, unless its single-machine mode is on (the mode it runs in on macOS and Windows,
    switched by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). Ray reads that variable once, when it is
    imported: Ray's own processes inherit it from the environment (SINGLE_MACHINE_ENV), and this
    process, which imported Ray before the config said the run is local, gets the constant it
    would have read. After the start the node's address is fixed, so the constant is restored."""
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def ray_address(config: Config, override: str | None = None) -> str | None:
    return override or config.ray.address or os.environ.get("RAY_ADDRESS") or None


def is_local_ray() -> bool:
    """Whether the Ray this process is connected to is one it started itself (start_local_ray),
    where a run may take the whole machine, rather than a cluster that others share."""
    return ray.is_initialized() and ray.get_runtime_context().gcs_address in _local_gcs


@contextmanager
def ray_session(config: Config, address: str | None = None, *, quiet: bool = True) -> Iterator[str | None]:
    """Use the Ray that is already initialized, else connect to `address` / ray.address /
    $RAY_ADDRESS, else start a local Ray. Yields the dashboard's address when this call started
    or connected Ray (None otherwise); only a Ray this call started or connected is shut down at
    the end. `quiet` keeps the workers' logs and Ray Data's progress lines off the terminal (our
    own progress reports epochs and steps)."""
    if ray.is_initialized():
        yield None
        return
    target = ray_address(config, address)
    if target is None:  # a new Ray of our own, never a `ray start` cluster that happens to run here
        dashboard = start_local_ray(quiet=quiet)
        log.info("started a local Ray (%s CPUs)", ray.cluster_resources().get("CPU"))
    else:
        try:
            dashboard = ray.init(address=target, logging_level=logging.WARNING, log_to_driver=not quiet).dashboard_url
        except (ConnectionError, ray.exceptions.RpcError, ray.exceptions.AuthenticationError) as exc:
            hint = " (a cluster with token authentication also needs RAY_AUTH_MODE=token here, and its token in " \
                   "~/.ray/auth_token or $RAY_AUTH_TOKEN)" if "auth" in str(exc).lower() else ""
            raise StepError(f"cannot connect to the Ray cluster at {target}: {exc}{hint}") from None
        log.info("connected to the Ray cluster at %s", target)
    if quiet:
        quiet_ray_data()
    lifetime.stop_on_signals()  # again: ray.init installs a SIGTERM handler that exits on the spot
    try:
        with muted_ray_errors() if quiet else nullcontext():
            yield dashboard
    finally:
        shut_down_ray()


def shut_down_ray() -> None:
    """ray.shutdown(), bounded during a stop. A signal to the command's whole process group (as
    systemd and supervisors send it) reaches Ray's GCS and raylet too, and ray.shutdown() then
    waits a minute for a GCS that no longer answers; the command ends Ray's processes itself
    instead (tasks/lifetime.py). Not at all while a thread of ours is still inside a Ray call
    that did not return in time (a training run, Serve's shutdown): tearing Ray's core worker down
    under it ends the process on the spot ("The core worker has already been shutdown")."""
    if not lifetime.stopping():
        ray.shutdown()
        return
    callers = [thread for thread in threading.enumerate() if thread.name in RAY_CALLERS]
    for thread in callers:  # one that has just returned from Ray is still finishing
        thread.join(0.5)
    if any(thread.is_alive() for thread in callers):
        return
    closing = threading.Thread(target=ray.shutdown, name="timedistill-ray-shutdown", daemon=True)
    closing.start()
    closing.join(SHUTDOWN_WAIT_S)


@contextmanager
def muted_ray_errors() -> Iterator[None]:
    """Print none of the errors Ray publishes to the driver: a paragraph for each Ray process that
    ends other than by Ray's own hand ("(raylet) A worker died or was killed ... OOM killer ...
    SIGSEGV", "The autoscaler failed ... Terminated with signal 15", "Task
    ServeController.graceful_shutdown failed"), which is every process at a stop, and a failure
    that matters reaches the command as an exception anyway (`--debug` shows them all).

    Ray 2.60 prints them from a thread of the driver (ray._private.worker.listen_error_messages)
    through the module's `print_to_stdstream`, whatever log_to_driver says, with no setting to
    turn them off; the thread looks the function up at each message, so replacing it here (a
    private name, hence this comment) silences that thread only, not the workers' own logs."""
    from ray._private import worker

    shown = worker.print_to_stdstream

    def unless_from_raylet(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            shown(data, ignore_prefix)

    worker.print_to_stdstream = unless_from_raylet
    try:
        yield
    finally:
        worker.print_to_stdstream = shown


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


@dataclass(frozen=True)
class Workers:
    """How training (and the cache's inference) runs: how many workers, and what each holds."""

    count: int
    cpus: float  # per worker
    gpus: float  # per worker; 0 on CPUs
    threads: int  # torch threads per worker: its CPUs

    @property
    def resources(self) -> dict[str, float]:
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}

    @classmethod
    def of(cls, config: Config) -> Workers:
        """What the config asks for; what it leaves unset (None) sized to a local Ray (every CPU,
        a worker per GPU) or, on a cluster, one worker with one CPU. On a cluster smaller than
        asked for, the CPU request shrinks to fit instead of waiting forever."""
        settings, local = config.ray, is_local_ray()
        free, gpus = cluster_cpus(), float(ray.cluster_resources().get("GPU", 0))
        use_gpu = settings.use_gpu if settings.use_gpu is not None else (local and gpus >= 1)
        count = settings.num_workers or (max(int(gpus), 1) if local and use_gpu else 1)
        cpus = settings.cpus_per_worker or (max(free // count, 1.0) if local else 1.0)
        if cpus * count > free:
            cpus = max(round(free / count, 2), 0.1)
            log.info("asking %.2f CPU per worker (%s workers do not fit %s CPUs otherwise)", cpus, count, free)
        return cls(count=count, cpus=cpus, gpus=settings.gpus_per_worker if use_gpu else 0.0,
                   threads=max(int(cpus), 1))


def parallel_runs(config: Config, runs: int, address: str | None, connect: Callable[[], None]) -> int:
    """How many of `runs` training runs (one per horizon) go at once: `ray.parallel_runs`, or
    as many as the cluster's free resources fit. A local Ray that sizes the workers itself gives
    one run every CPU (Workers.of), so it runs one at a time, and is not started to find out;
    otherwise `connect` starts or connects Ray, whose free resources decide."""
    settings = config.ray
    if runs < 2 or settings.parallel_runs == 1:
        return 1
    if settings.parallel_runs is not None:  # runs beyond what is free wait for Ray to place them
        return min(runs, settings.parallel_runs)
    local = is_local_ray() if ray.is_initialized() else ray_address(config, address) is None
    if local and settings.cpus_per_worker is None:
        return 1
    connect()
    workers, free = Workers.of(config), ray.available_resources()
    fits = free.get("CPU", 0.0) // (workers.count * workers.cpus)
    if workers.gpus:
        fits = min(fits, free.get("GPU", 0.0) // (workers.count * workers.gpus))
    return int(min(max(fits, 1), runs))


def run_concurrently(calls: list[Callable[[], Result]], limit: int, resume_from: str) -> list[Result]:
    """Every call, at most `limit` at a time, each in a daemon thread that carries the caller's
    context (Prefect's run context among it); results in the calls' order. A call that fails
    does not stop the others (what they finish is stored for the next run); the first failure
    is raised once all have ended. Ctrl-C reaches the waiting thread, which stops the training
    runs still in flight (stop_training_runs), gives their threads STOP_WAIT_S to return, and
    raises Interrupted."""
    futures: list[Future[Result]] = [Future() for _ in calls]
    slots = threading.BoundedSemaphore(limit)

    def run(call: Callable[[], Result], future: Future[Result]) -> None:
        try:
            future.set_result(call())
        except BaseException as exc:  # re-raised in the caller's thread below
            future.set_exception(exc)
        finally:
            slots.release()

    try:
        for call, future in zip(calls, futures, strict=True):
            while not slots.acquire(timeout=0.5):  # short waits: Ctrl-C lands between them
                pass
            threading.Thread(target=contextvars.copy_context().run, args=(run, call, future), daemon=True,
                             name="timedistill-run").start()
        while wait(futures, timeout=0.5).not_done:
            pass
    except KeyboardInterrupt:
        if not all(future.done() for future in futures):
            try:
                stop_training_runs()
                wait(futures, timeout=STOP_WAIT_S)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                pass
        interrupt = Interrupted(resume_from)
        lifetime.last_words(interrupt.describe())
        raise interrupt from None
    return [future.result() for future in futures]


def stop_training_runs() -> int:
    """End this job's Ray Train runs that are still in flight, so that the threads blocked in
    their fit() return (ActorDiedError) before the Ray session closes. Returns how many it ended.

    Closing the session while such a thread still waits is a race: the thread can wake inside
    a core worker that ray.shutdown() is tearing down, and the process then exits (1, once
    SIGSEGV) before it can say where to resume. Each run's controller owns its training workers,
    which die with it; killing it is what ray.shutdown() would do a moment later, in an order
    that lets the threads leave first. Ray Train pins the controller to the driver's node, so its
    pid, from Ray's state API (asked at this session's address, not the machine's latest Ray),
    is ours to signal. Ray Train's own Ctrl-C handling, which holds the controller's handle, is
    not installed for a fit in a thread (fit_interruptibly)."""
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    try:
        controllers = list_actors(address=context.gcs_address, timeout=math.ceil(STOP_WAIT_S), detail=True,
                                  raise_on_missing_output=False,  # timeout: the state API takes whole seconds
                                  filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE"),
                                           ("job_id", "=", context.get_job_id())])
    except Exception as exc:  # no state API (no dashboard): ray.shutdown() stops them, as before
        log.debug("cannot list the training runs in flight: %s", exc)
        return 0
    ended = 0
    for controller in controllers:
        if controller.node_id == context.get_node_id() and controller.pid:
            with suppress(ProcessLookupError):
                os.kill(controller.pid, signal.SIGKILL)
                ended += 1
    return ended


def quiet_ray_data() -> None:
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
