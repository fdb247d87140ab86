"""What may be served: a typed reference to a verified version (`ModelRef`), the verdicts of
verification, and `RegistryView`, the registry as the API sees it. `load_served` is how a model
replica loads what a reference names."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from timedistill.serving.schema import ModelInfo, ModelList
from timedistill.store.errors import BrokenVersion, ModelUnavailable, RegistryError
from timedistill.store.forecaster import ForecastModel, load_listed
from timedistill.store.records import RegistryEntry
from timedistill.store.registry import (
    ModelFolder,
    check_name,
    check_version,
    list_model,
    read_latest,
    registered_models,
    version_files,
)
from timedistill.store.storage import Storage


@dataclass(frozen=True)
class ModelRef:
    """A verified version as requests are routed to it: the model, the version, and the digest of
    the files it was verified from (`version_files`). When a version's files change, so does its
    reference: no replica keeps answering from (or keeps refusing) files that are no longer there."""

    name: str
    version: str
    files: str

    @property
    def id(self) -> str:
        """The reference as one string, for Ray Serve's multiplexed model id; `parse` reads it back."""
        return f"{self.name}@{self.version}#{self.files}"

    @classmethod
    def parse(cls, model_id: str) -> ModelRef:
        name, _, rest = model_id.partition("@")
        version, _, files = rest.partition("#")
        return cls(name, version, files)

    def __str__(self) -> str:  # in messages and logs
        return f"{self.name}@{self.version}"


def load_served(storage: Storage, ref: ModelRef) -> ForecastModel:
    """The model `ref` names, loaded and probed from files that are still those verified;
    otherwise BrokenVersion naming why (the ingress then verifies the version again)."""
    if version_files(storage, ref.name, ref.version) != ref.files:  # validates the name and version first
        raise BrokenVersion(ref.name, ref.version, "its files changed since it was verified")
    return load_listed(storage, ref.name, ref.version)[1]


class Served(NamedTuple):
    """A version that passed verification: what a request is answered with."""

    ref: ModelRef
    entry: RegistryEntry  # config, scaler, metrics


class Verdict(NamedTuple):
    """What verification found for one version, and of which files."""

    ref: ModelRef  # the version, and the digest of the files judged
    entry: RegistryEntry | None  # when it serves
    reason: str | None  # why it does not
    checked: float  # when the files were last compared with the storage (time.monotonic)


class Choice(NamedTuple):
    """What a model's LATEST resolved to, until when."""

    version: str | None  # the version to serve
    reason: str  # why there is none
    until: float  # time.monotonic


class Lookup:
    """One resolution's look at a model's registry folder: listed when first needed, and once."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage, self.name = storage, check_name(name)

    @cached_property
    def folder(self) -> ModelFolder:
        return list_model(self.storage, self.name)


class RegistryView:
    """Registry lookups for the API, verified: a version is served only once its files parse and
    its weights load and answer a probe. A LATEST that fails falls back to the newest version
    before it that passes, and the failure (with its reason) is reported by /v1/models and
    /readyz; a LATEST that names no version at all (empty, not text, a folder) makes its model
    unavailable, with the reason. LATEST is re-read at most every `ttl` seconds (this is how
    replicas pick up newly registered versions and rollbacks).

    No verdict outlives a change of the files: each one records the digest of the version's files
    and is compared with them at most every `ttl` seconds; files that changed are verified again.
    A LATEST that changes (a new version, a rollback) and a reload verify that model's versions
    again, and a replica that finds a version's files changed or unloadable (`load_served`) makes
    the view forget its verdict (`forget`).

    A resolution that must look at the storage lists the model's folder once (`list_model`: its
    LATEST, its complete versions, each one's files) and reads only the files it must: LATEST,
    and those of a version it verifies. The models verification loaded are kept, the
    `keep_models` most recent, until the ingress's resident models take them (`take_model`)."""

    def __init__(self, storage: Storage, ttl: float, keep_models: int = 0) -> None:
        self.storage, self.ttl, self.keep_models = storage, ttl, keep_models
        self._latest: dict[str, Choice] = {}
        self._pointers: dict[str, str] = {}  # model -> what its LATEST held when last read
        self._verdicts: dict[tuple[str, str], Verdict] = {}
        self._models: OrderedDict[ModelRef, ForecastModel] = OrderedDict()  # verified, not taken yet

    def refresh(self) -> None:
        """Read every LATEST and verify every version again."""
        self._latest.clear()
        self._pointers.clear()
        self._verdicts.clear()
        self._models.clear()

    def forget(self, ref: ModelRef) -> None:
        """A replica could not load this version from these files: verify it again before it is
        served again (a verdict on other files, newer, stays)."""
        verdict = self._verdicts.get((ref.name, ref.version))
        if verdict is not None and verdict.ref == ref:
            del self._verdicts[(ref.name, ref.version)]
            self._latest.pop(ref.name, None)
        self._models.pop(ref, None)

    def take_model(self, ref: ModelRef) -> ForecastModel | None:
        """The model verification loaded from `ref`'s files, handed over once (the view keeps it
        no longer); None when it was not kept."""
        return self._models.pop(ref, None)

    def resolve(self, name: str, version: str | None) -> Served:
        """The verified version name@version (its config, scaler, metrics); LATEST by default, or
        the newest good version before a LATEST that fails."""
        return self._resolve(Lookup(self.storage, name), version)

    def broken(self, name: str) -> dict[str, str]:
        """The versions of a model that failed verification, and why."""
        return {version: verdict.reason for (model, version), verdict in self._verdicts.items()
                if model == name and verdict.reason is not None}

    def models(self) -> ModelList:
        infos, unavailable = [], {}
        for name in registered_models(self.storage):
            lookup = Lookup(self.storage, name)
            try:
                entry = self._resolve(lookup, None).entry
            except RegistryError as exc:  # one model's broken entry never hides the others
                unavailable[name] = str(exc)
                continue
            config = entry.config
            infos.append(ModelInfo(
                name=name, version=entry.version, versions=lookup.folder.versions,
                lookback=config.lookback, horizon=config.horizon, variables=config.variables,
                time_column=config.timestamp, teacher=config.teacher, quantiles=config.quantiles,
                broken=self.broken(name),
                metrics={role: headline.to_json() for role, headline in entry.metrics.headline().items()}))
        return ModelList(models=infos, unavailable=unavailable)

    def _resolve(self, lookup: Lookup, version: str | None) -> Served:
        if version is not None:
            return self._verified(lookup, version)
        name, now = lookup.name, time.monotonic()
        choice = self._latest.get(name)
        if choice is not None and choice.until >= now and choice.version is not None:
            try:
                return self._verified(lookup, choice.version)
            except ModelUnavailable:  # it broke since LATEST was read: choose again at once
                choice = None
        if choice is None or choice.until < now:
            try:
                choice = Choice(self._servable(lookup), "", time.monotonic() + self.ttl)
            except ModelUnavailable as exc:  # kept for `ttl` too: a broken model costs no reads per request
                choice = Choice(None, str(exc), time.monotonic() + self.ttl)
            self._latest[name] = choice
        if choice.version is None:
            raise ModelUnavailable(choice.reason)
        return self._verified(lookup, choice.version)

    def _servable(self, lookup: Lookup) -> str:
        """The version to serve for LATEST: the version it names when it verifies, else the newest
        complete one before it that does."""
        name, folder = lookup.name, lookup.folder
        pointer = read_latest(self.storage, name, folder.latest)  # BrokenLatest when it names no version
        if pointer is None:
            raise RegistryError(f"model {name!r} is not registered")
        if self._pointers.get(name, pointer) != pointer:  # a new version or a rollback: verify again
            self._drop(name, keep=set())
        self._pointers[name] = pointer
        self._drop(name, keep=set(folder.complete))  # removed versions are no longer reported
        if pointer not in folder.complete:
            self._verdicts[(name, pointer)] = Verdict(ModelRef(name, pointer, ""), None, f"LATEST points at "
                                                      f"{pointer!r}, which is not a complete version", time.monotonic())
        limit = int(pointer[1:])  # a rollback's LATEST: nothing newer is served
        for candidate in reversed([v for v in folder.versions if int(v[1:]) <= limit]):
            try:
                self._verified(lookup, candidate)
            except ModelUnavailable:
                continue
            return candidate
        reasons = "; ".join(f"{v}: {why}" for v, why in self.broken(name).items())
        raise ModelUnavailable(f"model {name!r} has no version that loads ({reasons})")

    def _verified(self, lookup: Lookup, version: str) -> Served:
        """name@version, verified again when its files changed; raises ModelUnavailable for a
        broken version, RegistryError for one that is not registered."""
        key, now = (lookup.name, version), time.monotonic()
        verdict = self._verdicts.get(key)
        if verdict is None or verdict.checked + self.ttl < now:
            check_version(lookup.name, version)  # before the listing: a path is built from it
            files = lookup.folder.complete.get(version)
            if files is None:
                raise RegistryError(f"version {version!r} of model {lookup.name!r} is not registered")
            if verdict is None or verdict.ref.files != files:
                verdict = self._verify(ModelRef(lookup.name, version, files))
            self._verdicts[key] = verdict = verdict._replace(checked=now)
        if verdict.entry is None:
            raise ModelUnavailable(f"version {version} of model {lookup.name!r} is broken: {verdict.reason}")
        return Served(verdict.ref, verdict.entry)

    def _verify(self, ref: ModelRef) -> Verdict:
        """The verdict on the files `ref` names, as they are (complete, as the listing showed)."""
        try:
            entry, model = load_listed(self.storage, ref.name, ref.version)
        except BrokenVersion as exc:
            return Verdict(ref, None, exc.reason, time.monotonic())
        if self.keep_models:
            self._models[ref] = model
            while len(self._models) > self.keep_models:
                self._models.popitem(last=False)
        return Verdict(ref, entry, None, time.monotonic())

    def _drop(self, name: str, keep: set[str]) -> None:
        """Forget the verdicts (and kept models) on the versions of `name` not in `keep`."""
        for key in [key for key in self._verdicts if key[0] == name and key[1] not in keep]:
            del self._verdicts[key]
        for ref in [ref for ref in self._models if ref.name == name and ref.version not in keep]:
            del self._models[ref]
