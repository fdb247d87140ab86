"""Writing the model registry (store/registry.py reads it; the layout is described there).

A gate in the config decides whether a new student is registered at all, and the decision is
recorded with its reason. A version is written completely (its _SUCCESS last) before LATEST
points at it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import NamedTuple

from timedistill.conf import Config
from timedistill.store.forecaster import ForecastModel
from timedistill.store.records import ChampionDecision, Dataset, RegisteredModel, Registration, ResultRow, StudentsRun
from timedistill.store.registry import LATEST, VERSION, check_name, latest, read_version
from timedistill.store.scaler import NamedScaler
from timedistill.store.storage import SUCCESS, Storage
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
    version = latest(storage, model)
    if version is None:
        return Verdict(True, "gate 'beats-champion': no champion yet")
    champion_entry = read_version(storage, model, version)
    held = champion_entry.config
    if (held.lookback, held.horizon, held.variables) != (students.lookback, students.horizon, dataset.variables):
        return Verdict(True, f"gate 'beats-champion': champion {version} forecasts another window or other "
                             "variables and cannot be compared")
    champion = ForecastModel.from_registry(storage, model, version)
    challenger = ForecastModel.with_scaler(students.load(storage, "student"), dataset.scaler, students.lookback,
                                           students.horizon)
    values = dataset.values(storage)
    starts = window_starts(dataset.splits["val"], students.lookback, students.horizon)
    champion_mse, challenger_mse = (score_windows(m, values, starts, dataset.scaler) for m in (champion, challenger))
    windows = window_range(dataset.timestamps(storage), starts, students.lookback, students.horizon)
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
    current = latest(storage, model)

    def decided(registered: bool, version: str | None, verdict: Verdict) -> Registration:
        path = storage.uri(f"registry/{model}/{version}") if version else None
        return Registration(name=model, version=version, registered=registered, reason=verdict.reason,
                            registry_path=path, metrics=row.headline(), decision=verdict.decision)

    if current is not None:
        held = RegisteredModel.from_json(storage.read_json(f"registry/{model}/{current}/config.json"))
        if held.run_id == run_id and held.data_fingerprint == dataset.fingerprint:
            return decided(False, current, Verdict(False, f"already registered as {current}"))
    verdict = gate(config, storage, model, dataset, students, row)
    if not verdict.admitted:
        return decided(False, None, verdict)
    existing = [int(VERSION.match(v).group(1)) for v in storage.listdir(f"registry/{model}") if VERSION.match(v)]
    version = f"v{max(existing, default=0) + 1}"
    folder = f"registry/{model}/{version}"
    student = students.student
    registered = RegisteredModel(
        model=model, version=version, student=student.name, hparams=student.hparams, lookback=students.lookback,
        horizon=students.horizon, variables=dataset.variables, target=dataset.target, step=dataset.step,
        timestamp=dataset.timestamp, ignored_columns=dataset.ignored_columns, quantiles=student.quantiles,
        dataset=dataset.name, data_fingerprint=dataset.fingerprint, run_id=run_id, teacher=students.teacher_name,
        created=datetime.now(UTC).isoformat(timespec="seconds"), timedistill_config=config.public())
    scaler = NamedScaler(variables=dataset.variables, mean=dataset.scaler.mean, std=dataset.scaler.std)
    with storage.publish_dir(folder) as staging:
        storage.write_bytes(f"{staging}/student.pt", storage.read_bytes(students.weights_path("student")))
        storage.write_json(f"{staging}/config.json", registered.to_json())
        storage.write_json(f"{staging}/scaler.json", scaler.to_json())
        storage.write_json(f"{staging}/metrics.json", row.to_json())
        storage.write_bytes(f"{staging}/{SUCCESS}", b"")
    try:  # what a server will do with it: read it back, load it, ask it once
        ForecastModel.from_registry(storage, model, version).probe()
    except Exception as exc:
        storage.delete(folder)
        raise StepError(f"registration of {model} {version} refused: it does not load back from "
                        f"{storage.uri(folder)} ({type(exc).__name__}: {exc})") from None
    storage.write_bytes(f"registry/{model}/{LATEST}", f"{version}\n".encode())  # atomic, and only now
    return decided(True, version, verdict)


def rollback(storage: Storage, model: str, version: str) -> str:
    """Point the model's LATEST at an earlier complete version (a running server picks it up as
    it picks up a new one); returns the version it replaced."""
    read_version(storage, model, version)  # complete and registered, or RegistryError
    before = latest(storage, model)
    storage.write_bytes(f"registry/{model}/{LATEST}", f"{version}\n".encode())
    return before or "-"
