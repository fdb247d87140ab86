"""Errors a user can act on. The command line prints their message on one line, no traceback."""


class DataError(ValueError):
    """Input data that cannot be used. The message names the file and where the problem is."""


class StepError(RuntimeError):
    """A pipeline step that cannot run as configured (e.g. a missing teacher); says what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a step. Every write is atomic, so nothing is half written;
    `resume_from` says where the same command picks up: the checkpoints of the training that was
    interrupted, or None where it had written none yet (a rerun starts it over)."""

    def __init__(self, resume_from: str | None) -> None:
        super().__init__(resume_from)
        self.resume_from = resume_from

    def describe(self) -> str:
        """The one line the command prints."""
        if self.resume_from is None:
            return INTERRUPTED + "no checkpoint yet: a rerun starts that training over"
        return INTERRUPTED + f"rerun resumes from {self.resume_from}"


INTERRUPTED = "interrupted; nothing half written; "
INTERRUPTED_BETWEEN_STEPS = INTERRUPTED + "a rerun skips the steps already done"  # any other interrupt
