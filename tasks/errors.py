"""Errors a user can act on. The command line prints their message on one line, no traceback."""


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
