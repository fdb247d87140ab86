"""The model registry: what Ray Serve loads.

    registry/<model>/v<k>/student.pt     the distilled student's weights (a plain state dict)
                          config.json    architecture, window, variables, the run's config
                          scaler.json    the train-split scaler the student was trained with
                          metrics.json   teacher vs student vs baseline on the test split
                          _SUCCESS       written last: a version counts only once it is complete
    registry/<model>/LATEST             "v<k>", replaced atomically after the version is complete

A gate in the config decides whether a new student is registered at all, and the decision is
recorded with its reason.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import torch

import models
from conf import Config
from conf.schema import PLAIN_NAME
from tasks.storage import SUCCESS, Storage

if TYPE_CHECKING:  # the registry reader (serving) must not import the training stack
    from tasks.ingest import Dataset
    from tasks.students import Students

LATEST = "LATEST"
VERSION = re.compile(r"^v(\d+)$")


class RegistryError(LookupError):
    """A model or version that is not in the registry."""


class InvalidModelName(RegistryError):
    """A name that cannot be a registry entry (it would escape the registry as a path)."""


@dataclass(frozen=True)
class Decision:
    model: str
    registered: bool
    version: str | None  # the new version, or the one already holding this run
    reason: str
    path: str | None = None


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


def read_version(storage: Storage, model: str, version: str | None = None) -> dict[str, Any]:
    """The files of one complete version (LATEST when version is None), validated against the
    registry's own listing before any path is built from them."""
    check_name(model)
    chosen = version or latest(storage, model)
    if chosen is None or not VERSION.match(chosen) or chosen not in versions(storage, model):
        what = f"version {version!r} of model {model!r}" if version else f"model {model!r}"
        raise RegistryError(f"{what} is not registered")
    folder = f"registry/{model}/{chosen}"
    return {
        "model": model,
        "version": chosen,
        "config": storage.read_json(f"{folder}/config.json"),
        "scaler": storage.read_json(f"{folder}/scaler.json"),
        "metrics": storage.read_json(f"{folder}/metrics.json"),
        "weights": f"{folder}/student.pt",
    }


def load_student(storage: Storage, entry: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    spec = entry["config"]
    model = models.build_model(spec["student"], lookback=spec["lookback"], horizon=spec["horizon"],
                               n_vars=len(spec["variables"]), **spec["hparams"])
    state = torch.load(io.BytesIO(storage.read_bytes(entry["weights"])), map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def gate(config: Config, storage: Storage, model: str, row: dict[str, Any]) -> tuple[bool, str]:
    """Whether the config's gate lets this student in, and why."""
    rule, student = config.registry.gate, row["student"]["test_mse"]
    if rule == "always":
        return True, "gate 'always'"
    if rule == "beats-baseline":
        if "baseline" not in row:
            return False, "gate 'beats-baseline' needs the baseline (distill.baseline is off)"
        baseline = row["baseline"]["test_mse"]
        verdict = student < baseline
        return verdict, f"student test MSE {student:.4f} {'<' if verdict else '>='} baseline {baseline:.4f}"
    previous = latest(storage, model)
    if previous is None:
        return True, "gate 'beats-previous': no previous version"
    before = storage.read_json(f"registry/{model}/{previous}/metrics.json")["student"]["test_mse"]
    bound = before * (1 - config.registry.margin)
    verdict = student < bound
    return verdict, (f"student test MSE {student:.4f} {'<' if verdict else '>='} {previous}'s {before:.4f} "
                     f"less {config.registry.margin:.1%}")


def register(config: Config, storage: Storage, dataset: Dataset, students: Students, row: dict[str, Any],
             run_id: str) -> Decision:
    """Register the run's student for its horizon if the gate lets it in; idempotent per run."""
    horizon = students.meta["horizon"]
    model = check_name(config.model_name(horizon))
    current = latest(storage, model)
    if current is not None:
        held = storage.read_json(f"registry/{model}/{current}/config.json")
        if held.get("run_id") == run_id and held.get("data_fingerprint") == dataset.fingerprint:
            return Decision(model, False, current, f"already registered as {current}",
                            storage.uri(f"registry/{model}/{current}"))
    admitted, reason = gate(config, storage, model, row)
    if not admitted:
        return Decision(model, False, None, reason)
    existing = [int(VERSION.match(v).group(1)) for v in storage.listdir(f"registry/{model}") if VERSION.match(v)]
    version = f"v{max(existing, default=0) + 1}"
    folder = f"registry/{model}/{version}"
    info = students.meta["models"]["student"]
    spec = {
        "model": model, "version": version, "student": info["name"], "hparams": info["hparams"],
        "lookback": students.meta["lookback"], "horizon": horizon, "variables": dataset.variables,
        "target": dataset.manifest["target"], "step": dataset.manifest["step"], "dataset": dataset.name,
        "data_fingerprint": dataset.fingerprint, "run_id": run_id, "teacher": students.meta["teacher_name"],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "timedistill_config": config.model_dump(mode="json"),
    }
    with storage.publish_dir(folder) as staging:
        storage.write_bytes(f"{staging}/student.pt", storage.read_bytes(students.weights_path("student")))
        storage.write_json(f"{staging}/config.json", spec)
        storage.write_json(f"{staging}/scaler.json", {"variables": dataset.variables, **dataset.manifest["scaler"]})
        storage.write_json(f"{staging}/metrics.json", row)
        storage.write_bytes(f"{staging}/{SUCCESS}", b"")
    storage.write_bytes(f"registry/{model}/{LATEST}", f"{version}\n".encode())  # atomic, and only now
    return Decision(model, True, version, reason, storage.uri(folder))
