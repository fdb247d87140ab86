"""Reading the model registry (what Ray Serve loads); tasks/registry.py writes it.

    registry/<model>/v<k>/student.pt     the distilled student's weights (a plain state dict)
                          config.json    architecture, window, variables, the run's config
                          scaler.json    the train-split scaler the student was trained with
                          metrics.json   teacher vs student vs baseline on the test split
                          _SUCCESS       written last: a version counts only once it is complete
    registry/<model>/LATEST             "v<k>", replaced atomically after the version is complete
    registry/<model>/claims/v<k>.<id>   who took version k (tasks/registry.py, `claim_version`)

Model names become paths, so every name is checked before a path is built from it, and a version
is accepted only from the registry's own listing. A LATEST is read defensively: whatever it holds
(nothing, bytes that are not text, a folder, a name that is not a version) is a `BrokenLatest`
naming what is wrong, for that model alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from timedistill.conf import FORMAT
from timedistill.conf.schema import PLAIN_NAME
from timedistill.store.errors import BrokenLatest, InvalidModelName, RegistryError
from timedistill.store.record import read_record
from timedistill.store.records import RegisteredModel, RegistryEntry, ResultRow
from timedistill.store.scaler import NamedScaler
from timedistill.store.storage import SUCCESS, FileStat, Storage

LATEST = "LATEST"
# the record formats a registered version may be in: a version registered by an earlier release
# is served as it was (its files hold nothing this version's records do not read)
REGISTRY_FORMATS = (1, FORMAT)
VERSION = re.compile(r"^v(\d{1,9})$")  # bounded: a version number is an int everywhere
Kind = Literal["file", "folder"]


@dataclass(frozen=True)
class ModelFolder:
    """registry/<model>/ as one listing shows it: enough to resolve the model's LATEST (`read_latest`)
    and to tell whether a version's files changed, without another look."""

    model: str
    latest: Kind | None  # what LATEST is, before it is read; None when there is none
    complete: dict[str, str]  # each complete version -> the digest of its files (`files_digest`)

    @property
    def versions(self) -> list[str]:
        """The complete versions, oldest first."""
        return sorted(self.complete, key=lambda v: int(v[1:]))


def check_name(name: str) -> str:
    """Model names become paths: only plain registry names are accepted (no '/', '..')."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name):
        raise InvalidModelName(f"{name!r} is not a valid model name ([a-z0-9_-], starting with a letter or digit)")
    return name


def check_version(model: str, version: str) -> str:
    """Versions become paths: only "v<k>" is accepted (of a plain model name), as `versions` lists them."""
    check_name(model)
    if not isinstance(version, str) or not VERSION.match(version):
        raise RegistryError(f"version {version!r} of model {model!r} is not registered")
    return version


def list_model(storage: Storage, model: str) -> ModelFolder:
    """A model's folder in one listing (recursive): its LATEST, its complete versions (those with
    `_SUCCESS`) and the digest of each one's files (those directly in its folder, as
    `version_files` sees them)."""
    latest: Kind | None = None
    files: dict[str, list[FileStat]] = {}
    for entry in storage.stat_tree(f"registry/{check_name(model)}"):
        top, _, rest = entry.path.partition("/")
        if top == LATEST:
            latest = "folder" if rest or entry.is_dir else "file"  # sorted: a folder's own entries come after it
        elif VERSION.match(top) and rest and "/" not in rest and not entry.is_dir:
            files.setdefault(top, []).append(FileStat(rest, entry.size, entry.mtime_ns))
    complete = {version: files_digest(stats) for version, stats in files.items()
                if any(stat.name == SUCCESS for stat in stats)}
    return ModelFolder(model, latest, complete)


def versions(storage: Storage, model: str) -> list[str]:
    """Complete versions of a model, oldest first."""
    return list_model(storage, model).versions


def latest(storage: Storage, model: str) -> str | None:
    """The version LATEST names ("v3"), which may be incomplete or missing (callers check it
    against `versions`); None when the model has no LATEST. A LATEST that names no version raises
    BrokenLatest with the reason."""
    path = f"registry/{check_name(model)}/{LATEST}"
    kind: Kind | None = None if not storage.exists(path) else "folder" if storage.is_dir(path) else "file"
    return read_latest(storage, model, kind)


def read_latest(storage: Storage, model: str, kind: Kind | None) -> str | None:
    """`latest`, knowing what LATEST is (`kind`, from `list_model`): at most one read."""
    if kind is None:
        return None
    if kind == "folder":
        raise BrokenLatest(f"the LATEST of model {model!r} is a folder, not a file naming a version")
    try:
        text = storage.read_bytes(f"registry/{check_name(model)}/{LATEST}").decode()
    except UnicodeDecodeError:
        raise BrokenLatest(f"the LATEST of model {model!r} is not UTF-8 text naming a version") from None
    except OSError as exc:
        raise BrokenLatest(f"the LATEST of model {model!r} does not read: {exc}") from None
    pointer = text.strip()
    if not pointer:
        raise BrokenLatest(f"the LATEST of model {model!r} is empty")
    if not VERSION.match(pointer):
        raise BrokenLatest(f"the LATEST of model {model!r} holds {pointer[:40]!r}, not a version such as v3")
    return pointer


def registered_models(storage: Storage) -> list[str]:
    """The models with a LATEST, whatever it holds: what a server reports on (a broken LATEST
    makes its model unavailable, not invisible)."""
    return [name for name in storage.listdir("registry")
            if PLAIN_NAME.match(name) and storage.exists(f"registry/{name}/{LATEST}")]


def list_models(storage: Storage) -> list[str]:
    """The models whose LATEST names a version (what `models list` shows)."""
    return [name for name in registered_models(storage) if names_a_version(storage, name)]


def names_a_version(storage: Storage, model: str) -> bool:
    try:
        return latest(storage, model) is not None
    except BrokenLatest:
        return False


def version_files(storage: Storage, model: str, version: str) -> str:
    """A digest of a version's files as they are now (names, sizes, modification times: one
    listing, on a local disk and on an object store alike), so that a verdict on a version can
    tell when its files changed. On an object store a rewrite of the same size within the same
    second goes unnoticed (its modification time has one-second resolution)."""
    check_version(model, version)
    return files_digest(storage.stat_files(f"registry/{model}/{version}"))


def files_digest(stats: list[FileStat]) -> str:
    """The digest `version_files` and `list_model` give the same files."""
    return hashlib.sha256(repr(sorted(stats)).encode()).hexdigest()[:16]


def read_version(storage: Storage, model: str, version: str | None = None) -> RegistryEntry:
    """One complete version (LATEST when version is None), validated against the registry's own
    listing before any path is built from it."""
    check_name(model)
    chosen = version or latest(storage, model)
    if chosen is None or not VERSION.match(chosen) or chosen not in versions(storage, model):
        if version is None and chosen is not None:
            raise RegistryError(f"the LATEST of model {model!r} names {chosen}, which is not a complete version")
        what = f"version {version!r} of model {model!r}" if version else f"model {model!r}"
        raise RegistryError(f"{what} is not registered")
    return read_entry(storage, model, chosen, f"registry/{model}/{chosen}")


def read_entry(storage: Storage, model: str, version: str, folder: str) -> RegistryEntry:
    """A version's records from `folder`, complete or not (registration reads back its own
    before it marks it complete); `read_version` is the checked way in."""
    return RegistryEntry(
        model=model, version=version,
        config=read_record(storage, f"{folder}/config.json", RegisteredModel, formats=REGISTRY_FORMATS),
        scaler=read_record(storage, f"{folder}/scaler.json", NamedScaler, formats=REGISTRY_FORMATS),
        metrics=read_record(storage, f"{folder}/metrics.json", ResultRow, formats=REGISTRY_FORMATS),
    )
