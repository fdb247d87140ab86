"""Errors a user can act on, raised by the store (light: the command line imports it first)."""


class RegistryError(LookupError):
    """A model or version that is not in the registry."""


class InvalidModelName(RegistryError):
    """A name that cannot be a registry entry (it would escape the registry as a path)."""


class ModelUnavailable(RegistryError):
    """A registered model none of whose versions loads and answers (each one's reason is kept)."""


class BrokenLatest(ModelUnavailable):
    """A LATEST that names no version: empty, not UTF-8 text, a folder, or something else."""


class BrokenVersion(ModelUnavailable):
    """A registered version that cannot be served: its files do not read, or its weights do not
    load and answer a probe."""

    def __init__(self, model: str, version: str, reason: str) -> None:
        super().__init__(f"version {version} of model {model!r} is broken: {reason}")
        self.model, self.version, self.reason = model, version, reason

    def __reduce__(self) -> tuple:  # raised in a model replica, re-raised in the ingress
        return (BrokenVersion, (self.model, self.version, self.reason))


class InputError(ValueError):
    """A history a model cannot forecast from; the message says what is wrong."""


def one_line(exc: BaseException) -> str:
    """An exception as one short line (for a reason shown to a user or a client)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
