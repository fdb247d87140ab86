"""Writing the model registry (store/registry.py reads it; the layout is described there).

A gate in the config decides whether a new student is registered at all, and the decision is
recorded with its reason. A version is written completely (its _SUCCESS last) before LATEST
points at it.

Several flows may register the same model at once, on a local disk or on an object store (S3,
GCS: both list and read their own and each other's writes at once): each takes a version number
of its own (`claim_version`), never writes into or removes a folder it did not claim, and LATEST
ends at the newest complete version (`point_latest_at_newest`).
"""

from __future__ import annotations

import math
import random
import re
import time
import uuid
from datetime import UTC, datetime
from typing import NamedTuple

from timedistill.conf import Config
from timedistill.store.errors import BrokenLatest, BrokenVersion
from timedistill.store.forecaster import ForecastModel, load_verified
from timedistill.store.record import read_record, write_record
from timedistill.store.records import ChampionDecision, Dataset, RegisteredModel, Registration, ResultRow, StudentsRun
from timedistill.store.registry import (
    LATEST,
    REGISTRY_FORMATS,
    VERSION,
    check_name,
    latest,
    read_entry,
    read_version,
    versions,
)
from timedistill.store.scaler import NamedScaler
from timedistill.store.series import series_timestamps, series_values
from timedistill.store.storage import SUCCESS, Storage
from timedistill.store.weights import load_forecaster, load_trained
from timedistill.tasks.errors import StepError
from timedistill.tasks.evaluate import score_windows, window_range
from timedistill.tasks.windows import window_starts


class Verdict(NamedTuple):
    admitted: bool
    reason: str
    decision: ChampionDecision | None = None


def gate(config: Config, storage: Storage, model: str, dataset: Dataset, students: StudentsRun,
         row: ResultRow) -> Verdict:
    """Whether the config's gate lets this student in, and why."""
    rule, student = config.registry.gate, row.student.test_mse
    if rule == "always":
        return Verdict(True, "gate 'always'")
    if rule == "beats-baseline":
        if row.baseline is None:
            return Verdict(False, "gate 'beats-baseline' needs the baseline (distill.baseline is off)")
        baseline = row.baseline.test_mse
        verdict = student < baseline
        return Verdict(verdict, f"student test MSE {student:.4f} {'<' if verdict else '>='} baseline {baseline:.4f}")
    return champion_gate(config, storage, model, dataset, students)


def champion_gate(config: Config, storage: Storage, model: str, dataset: Dataset, students: StudentsRun) -> Verdict:
    """beats-champion: the registered LATEST and the new student forecast the same newest windows
    (the new validation split), each in data units with its own scaler, and are scored by the
    same code on the newest data's scale; the new one must be better by registry.margin."""
    try:
        version = latest(storage, model)
    except BrokenLatest as exc:
        return Verdict(True, f"gate 'beats-champion': no champion to beat ({exc})")
    if version is None:
        return Verdict(True, "gate 'beats-champion': no champion yet")
    champion_entry = read_version(storage, model, version)
    held = champion_entry.config
    if (held.lookback, held.horizon, held.variables) != (students.lookback, students.horizon, dataset.variables):
        return Verdict(True, f"gate 'beats-champion': champion {version} forecasts another window or other "
                             "variables and cannot be compared")
    champion = ForecastModel.from_registry(storage, model, version)
    challenger = ForecastModel.with_scaler(load_trained(storage, students, "student"), dataset.scaler,
                                           students.lookback, students.horizon)
    values = series_values(storage, dataset)
    starts = window_starts(dataset.splits["val"], students.lookback, students.horizon)
    champion_mse, challenger_mse = (score_windows(m, values, starts, dataset.scaler) for m in (champion, challenger))
    windows = window_range(series_timestamps(storage, dataset), starts, students.lookback, students.horizon)
    decision = ChampionDecision(champion=version, champion_mse=champion_mse, challenger_mse=challenger_mse,
                                windows=windows)
    if not math.isfinite(champion_mse):
        return Verdict(True, f"gate 'beats-champion': champion {version} forecasts non-finite values on the "
                             f"{windows.count} newest validation windows", decision)
    admitted = challenger_mse < champion_mse * (1 - config.registry.margin)
    reason = (f"challenger MSE {challenger_mse:.4f} {'<' if admitted else '>='} champion {version}'s "
              f"{champion_mse:.4f} less {config.registry.margin:.1%}, on the {windows.count} newest validation "
              f"windows ({windows.start} to {windows.end})")
    return Verdict(admitted, reason, decision)


def register(config: Config, storage: Storage, dataset: Dataset, students: StudentsRun, row: ResultRow,
             run_id: str) -> Registration:
    """Register the run's student for its horizon if the gate lets it in; idempotent per run."""
    model = check_name(config.model_name(students.horizon))
    current = replaceable_latest(storage, model, f"registration of {model}")

    def decided(registered: bool, version: str | None, verdict: Verdict) -> Registration:
        path = storage.uri(f"registry/{model}/{version}") if version else None
        return Registration(name=model, version=version, registered=registered, reason=verdict.reason,
                            registry_path=path, metrics=row.headline(), decision=verdict.decision)

    if current is not None and storage.exists(f"registry/{model}/{current}/config.json"):
        held = read_record(storage, f"registry/{model}/{current}/config.json", RegisteredModel,
                           formats=REGISTRY_FORMATS)
        if held.run_id == run_id and held.data_fingerprint == dataset.fingerprint:
            return decided(False, current, Verdict(False, f"already registered as {current}"))
    verdict = gate(config, storage, model, dataset, students, row)
    if not verdict.admitted:
        return decided(False, None, verdict)
    version = claim_version(storage, model)
    folder = f"registry/{model}/{version}"
    student = students.student
    registered = RegisteredModel(
        model=model, version=version, student=student.name, hparams=student.hparams, lookback=students.lookback,
        horizon=students.horizon, variables=dataset.variables, target=dataset.target, step=dataset.step,
        timestamp=dataset.timestamp, ignored_columns=dataset.ignored_columns, quantiles=student.quantiles,
        dataset=dataset.name, data_fingerprint=dataset.fingerprint, run_id=run_id, teacher=students.teacher_name,
        created=datetime.now(UTC).isoformat(timespec="seconds"), timedistill_config=config.public())
    scaler = NamedScaler(variables=dataset.variables, mean=dataset.scaler.mean, std=dataset.scaler.std)
    with storage.publish_dir(folder, replace=False) as staging:
        storage.write_bytes(f"{staging}/student.pt", storage.read_bytes(students.weights_path("student")))
        write_record(storage, f"{staging}/config.json", registered)
        write_record(storage, f"{staging}/scaler.json", scaler)
        write_record(storage, f"{staging}/metrics.json", row)
        try:  # what a server will do with it: read it back, load it, ask it once; only then is it complete
            entry = read_entry(storage, model, version, staging)
            ForecastModel.with_scaler(load_forecaster(storage, f"{staging}/student.pt", entry.config.spec),
                                      entry.scaler, entry.config.lookback, entry.config.horizon).probe()
        except Exception as exc:
            raise StepError(f"registration of {model} {version} refused: it does not load back from "
                            f"{storage.uri(folder)} ({type(exc).__name__}: {exc})") from None
        storage.write_bytes(f"{staging}/{SUCCESS}", b"")
    point_latest_at_newest(storage, model)
    return decided(True, version, verdict)


def replaceable_latest(storage: Storage, model: str, doing: str) -> str | None:
    """The version LATEST names; None for no LATEST or one that names no version (writing a new
    one repairs it). A LATEST that is a folder, which a file cannot replace, refuses `doing`."""
    try:
        return latest(storage, model)
    except BrokenLatest as exc:
        pointer = f"registry/{model}/{LATEST}"
        if storage.is_dir(pointer):
            raise StepError(f"{doing} refused: {exc}; remove {storage.uri(pointer)} first") from None
        return None


CLAIMS = "claims"
CLAIM = re.compile(r"^v(\d{1,9})\.([0-9a-f]{32})$")
CLAIM_ATTEMPTS = 60


def claim_version(storage: Storage, model: str) -> str:
    """A version number no other registration of `model` gets, on a local disk or an object store.

    The registry's folders cannot be created exclusively on an object store, so a version is
    claimed instead: write a claim object of one's own, `claims/v<k>.<random id>`, then list the
    claims of v<k>. A claimant wins v<k> only when the listing holds its own claim alone; otherwise
    it removes its claim and tries a higher k after a short random wait. At most one claimant
    wins: of two that both won, each listed before the other's claim existed, so each wrote its
    claim after the other listed, which is after the other wrote, which is after it itself listed:
    a cycle. (This needs only that a listing shows every write finished before it began: true of
    a local disk, S3 and GCS.) The winner's claim stays, as the record that k is taken, so a
    claimant that read an older listing and comes late to k loses it too; a version folder that
    exists without a claim (written before claims existed) is never taken either. A number given
    up by every claimant is skipped: versions are ordered, not dense."""
    claims = f"registry/{model}/{CLAIMS}"
    mine = uuid.uuid4().hex
    number = next_version_number(storage, model)
    for attempt in range(CLAIM_ATTEMPTS):
        claim = f"v{number}.{mine}"
        storage.write_bytes(f"{claims}/{claim}", b"")
        rivals = [name for name in storage.listdir(claims)
                  if name != claim and (found := CLAIM.match(name)) and int(found.group(1)) == number]
        if not rivals and not storage.exists(f"registry/{model}/v{number}"):
            return f"v{number}"
        storage.delete(f"{claims}/{claim}")
        time.sleep(random.uniform(0, 0.02 * 2 ** min(attempt, 6)))
        number = max(number + 1, next_version_number(storage, model))
    raise StepError(f"registration of {model}: no version number free after {CLAIM_ATTEMPTS} attempts (claims "
                    f"under {storage.uri(claims)})")


def next_version_number(storage: Storage, model: str) -> int:
    """One more than any version folder (complete or not) or claim of the model."""
    folders = [int(found.group(1)) for name in storage.listdir(f"registry/{model}") if (found := VERSION.match(name))]
    claims = [int(found.group(1)) for name in storage.listdir(f"registry/{model}/{CLAIMS}")
              if (found := CLAIM.match(name))]
    return max(folders + claims, default=0) + 1


def point_latest_at_newest(storage: Storage, model: str) -> str:
    """Point LATEST at the model's newest complete version, and check again until it stays so.

    Registrations finish in any order, so each one, once its version is complete, writes the
    newest complete version it lists (not necessarily its own) and repeats until a reading of
    LATEST after its last write equals the newest it lists. Whichever write comes last, its writer
    then listed every version completed before it (a version completed later would have its own
    registration write after it), so LATEST ends at the newest complete version. A rollback made
    while a registration is in this loop may be overtaken by it: roll back again."""
    for _ in range(CLAIM_ATTEMPTS):
        newest = versions(storage, model)[-1]
        try:
            current = latest(storage, model)
        except BrokenLatest:
            current = None
        if current == newest:
            return newest
        storage.write_bytes(f"registry/{model}/{LATEST}", f"{newest}\n".encode())  # atomic
    raise StepError(f"LATEST of {model} did not settle on its newest version ({storage.uri(f'registry/{model}')})")


def rollback(storage: Storage, model: str, version: str, *, force: bool = False) -> str:
    """Point the model's LATEST at an earlier complete version (a running server picks it up as
    it picks up a new one); returns the version it replaced ("-" for none, or a LATEST that named
    no version). The version is first loaded and probed, as a server would: one that would not
    serve is refused, naming why, unless `force`."""
    try:
        load_verified(storage, model, version)  # unregistered: RegistryError
    except BrokenVersion as exc:
        if not force:
            raise StepError(f"{exc}; LATEST is left as it was (--force points it there anyway)") from None
    before = replaceable_latest(storage, model, f"rollback of {model}")
    storage.write_bytes(f"registry/{model}/{LATEST}", f"{version}\n".encode())
    return before or "-"
