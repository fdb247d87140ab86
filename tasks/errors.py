"""Errors a user can act on. The command line prints their message on one line, no traceback."""


class DataError(ValueError):
    """Input data that cannot be used. The message names the file and where the problem is."""


class StepError(RuntimeError):
    """A pipeline step that cannot run as configured (e.g. a missing teacher); says what to do."""
