"""Errors a user can act on, raised by the store (light: the command line imports it first)."""


class RegistryError(LookupError):
    """A model or version that is not in the registry."""


class InvalidModelName(RegistryError):
    """A name that cannot be a registry entry (it would escape the registry as a path)."""


class ModelUnavailable(RegistryError):
    """A registered model none of whose versions loads and answers (each one's reason is kept)."""


class InputError(ValueError):
    """A history a model cannot forecast from; the message says what is wrong."""
