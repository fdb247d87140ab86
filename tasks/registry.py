"""Writing the model registry (store/registry.py reads it; the layout is described there).

A gate in the config decides whether a new student is registered at all, and the decision is
recorded with its reason. A version is written completely (its _SUCCESS last) before LATEST
points at it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from conf import Config
from store.records import Dataset, RegisteredModel, Registration, ResultRow, StudentsRun
from store.registry import LATEST, VERSION, check_name, latest, read_version
from store.scaler import NamedScaler
from store.storage import SUCCESS, Storage


def gate(config: Config, storage: Storage, model: str, row: ResultRow) -> tuple[bool, str]:
    """Whether the config's gate lets this student in, and why."""
    rule, student = config.registry.gate, row.student.test_mse
    if rule == "always":
        return True, "gate 'always'"
    if rule == "beats-baseline":
        if row.baseline is None:
            return False, "gate 'beats-baseline' needs the baseline (distill.baseline is off)"
        baseline = row.baseline.test_mse
        verdict = student < baseline
        return verdict, f"student test MSE {student:.4f} {'<' if verdict else '>='} baseline {baseline:.4f}"
    previous = latest(storage, model)
    if previous is None:
        return True, "gate 'beats-previous': no previous version"
    before = read_version(storage, model, previous).metrics.student.test_mse
    bound = before * (1 - config.registry.margin)
    verdict = student < bound
    return verdict, (f"student test MSE {student:.4f} {'<' if verdict else '>='} {previous}'s {before:.4f} "
                     f"less {config.registry.margin:.1%}")


def register(config: Config, storage: Storage, dataset: Dataset, students: StudentsRun, row: ResultRow,
             run_id: str) -> Registration:
    """Register the run's student for its horizon if the gate lets it in; idempotent per run."""
    model = check_name(config.model_name(students.horizon))
    current = latest(storage, model)

    def decided(registered: bool, version: str | None, reason: str) -> Registration:
        path = storage.uri(f"registry/{model}/{version}") if version else None
        return Registration(name=model, version=version, registered=registered, reason=reason, registry_path=path,
                            metrics=row.headline())

    if current is not None:
        held = RegisteredModel.from_json(storage.read_json(f"registry/{model}/{current}/config.json"))
        if held.run_id == run_id and held.data_fingerprint == dataset.fingerprint:
            return decided(False, current, f"already registered as {current}")
    admitted, reason = gate(config, storage, model, row)
    if not admitted:
        return decided(False, None, reason)
    existing = [int(VERSION.match(v).group(1)) for v in storage.listdir(f"registry/{model}") if VERSION.match(v)]
    version = f"v{max(existing, default=0) + 1}"
    folder = f"registry/{model}/{version}"
    student = students.student
    registered = RegisteredModel(
        model=model, version=version, student=student.name, hparams=student.hparams, lookback=students.lookback,
        horizon=students.horizon, variables=dataset.variables, target=dataset.target, step=dataset.step,
        dataset=dataset.name, data_fingerprint=dataset.fingerprint, run_id=run_id, teacher=students.teacher_name,
        created=datetime.now(UTC).isoformat(timespec="seconds"), timedistill_config=config.model_dump(mode="json"))
    scaler = NamedScaler(variables=dataset.variables, mean=dataset.scaler.mean, std=dataset.scaler.std)
    with storage.publish_dir(folder) as staging:
        storage.write_bytes(f"{staging}/student.pt", storage.read_bytes(students.weights_path("student")))
        storage.write_json(f"{staging}/config.json", registered.to_json())
        storage.write_json(f"{staging}/scaler.json", scaler.to_json())
        storage.write_json(f"{staging}/metrics.json", row.to_json())
        storage.write_bytes(f"{staging}/{SUCCESS}", b"")
    storage.write_bytes(f"registry/{model}/{LATEST}", f"{version}\n".encode())  # atomic, and only now
    return decided(True, version, reason)
