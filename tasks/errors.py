"""Errors a user can act on. The command line prints their message on one line, no traceback."""

import signal
import threading


class DataError(ValueError):
    """Input data that cannot be used. The message names the file and where the problem is."""


class StepError(RuntimeError):
    """A pipeline step that cannot run as configured (e.g. a missing teacher); says what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a step. Every write is atomic, so nothing is half written;
    `resume_from` says where the same command picks up."""

    def __init__(self, resume_from: str) -> None:
        super().__init__(resume_from)
        self.resume_from = resume_from


def interrupt_on_sigterm() -> None:
    """Make SIGTERM what Ctrl-C is: KeyboardInterrupt, which every command turns into one line
    and a clean stop. ray.init installs a SIGTERM handler that exits the process on the spot
    (SystemExit), past the handling that stops Prefect's temporary server."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
