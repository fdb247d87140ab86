"""Reading the model registry (what Ray Serve loads); tasks/registry.py writes it.

    registry/<model>/v<k>/student.pt     the distilled student's weights (a plain state dict)
                          config.json    architecture, window, variables, the run's config
                          scaler.json    the train-split scaler the student was trained with
                          metrics.json   teacher vs student vs baseline on the test split
                          _SUCCESS       written last: a version counts only once it is complete
    registry/<model>/LATEST             "v<k>", replaced atomically after the version is complete

Model names become paths, so every name is checked before a path is built from it, and a version
is accepted only from the registry's own listing.
"""

from __future__ import annotations

import re

from timedistill.conf.schema import PLAIN_NAME
from timedistill.store.errors import InvalidModelName, RegistryError
from timedistill.store.records import RegisteredModel, RegistryEntry, ResultRow
from timedistill.store.scaler import NamedScaler
from timedistill.store.storage import SUCCESS, Storage

LATEST = "LATEST"
VERSION = re.compile(r"^v(\d+)$")


def check_name(name: str) -> str:
    """Model names become paths: only plain registry names are accepted (no '/', '..')."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name):
        raise InvalidModelName(f"{name!r} is not a valid model name ([a-z0-9_-], starting with a letter or digit)")
    return name


def versions(storage: Storage, model: str) -> list[str]:
    """Complete versions of a model, oldest first."""
    found = [name for name in storage.listdir(f"registry/{check_name(model)}") if VERSION.match(name)]
    complete = [v for v in found if storage.exists(f"registry/{model}/{v}/{SUCCESS}")]
    return sorted(complete, key=lambda v: int(v[1:]))


def latest(storage: Storage, model: str) -> str | None:
    path = f"registry/{check_name(model)}/{LATEST}"
    if not storage.exists(path):
        return None
    return storage.read_bytes(path).decode().strip()


def list_models(storage: Storage) -> list[str]:
    return [name for name in storage.listdir("registry") if PLAIN_NAME.match(name) and latest(storage, name)]


def read_version(storage: Storage, model: str, version: str | None = None) -> RegistryEntry:
    """One complete version (LATEST when version is None), validated against the registry's own
    listing before any path is built from it."""
    check_name(model)
    chosen = version or latest(storage, model)
    if chosen is None or not VERSION.match(chosen) or chosen not in versions(storage, model):
        what = f"version {version!r} of model {model!r}" if version else f"model {model!r}"
        raise RegistryError(f"{what} is not registered")
    folder = f"registry/{model}/{chosen}"
    return RegistryEntry(
        model=model, version=chosen,
        config=RegisteredModel.from_json(storage.read_json(f"{folder}/config.json")),
        scaler=NamedScaler.from_json(storage.read_json(f"{folder}/scaler.json")),
        metrics=ResultRow.from_json(storage.read_json(f"{folder}/metrics.json")),
    )
