"""Prefect's temporary server, for the commands that record their runs in Prefect (`retrain`,
`monitor`, `schedule`) without PREFECT_API_URL: started early, so that its seconds of start-up
overlap the command's imports, and stopped with the command, which it would outlive."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer

STOP_WAIT_S = 1.5  # for the log and event workers to drain, and for the server process to end


def temporary_prefect_server() -> SubprocessASGIServer | None:
    """The temporary Prefect server every client of this process will use, or None where
    PREFECT_API_URL names a server (or the temporary one is not allowed)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer()  # the instance every Prefect client of this process uses


@contextmanager
def prefect_server_warming() -> Iterator[None]:
    """Without PREFECT_API_URL the first flow run starts Prefect's temporary server and waits
    for it (seconds of CPU on a small machine). Start it in a thread while the body imports
    torch, Ray and the flow, and wait for it on the way out. A failed start here is left to the
    flow run, which starts the server itself and reports the error."""
    if (server := temporary_prefect_server()) is None:
        yield
        return

    def start() -> None:
        with suppress(Exception):  # the flow run starts it again and reports why
            server.start()

    starter = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    starter.start()
    try:
        yield
    finally:
        starter.join()


def start_prefect_server() -> None:
    """Start Prefect's temporary server (where one is used) here, in the main thread. Left to
    `prefect.serve`, its runner thread starts it, and an interrupt that comes first finds
    nothing to stop while the thread goes on to start a server that outlives us."""
    if (server := temporary_prefect_server()) is not None:
        server.start()


def stop_prefect_server() -> None:
    """Stop the temporary Prefect server this process started, if any (it would outlive us).

    Only its process ends: the instance stays registered as running, so that a Prefect thread
    still calling the API after an interrupt (the runner of `schedule`) fails on the stopped
    address instead of starting a new server. Prefect 3.9's public `stop()` also unregisters the
    instance, which is why the process is ended here directly, found through the instances
    Prefect keeps (a private attribute of SubprocessASGIServer). At exit Prefect's own handler
    reaps the process. Each wait is short: after a signal to the whole process group the server
    has already stopped, and nothing answers."""
    if "prefect.server.api.server" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    with suppress(Exception):
        # what the run logged and emitted goes out first: sent after the server has stopped, it
        # would be retried against nothing for a minute before the process could exit
        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=STOP_WAIT_S)
    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        if (process := getattr(server, "server_process", None)) is None:
            continue
        process.terminate()
        try:
            process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
