"""The library entry points: what `import timedistill` offers besides the HTTP client."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from timedistill.store.predictor import Predictor
from timedistill.store.records import RunSummary
from timedistill.store.storage import Storage


def retrain(config: str | Path, overrides: Sequence[str] = (), *, ray_address: str | None = None) -> RunSummary:
    """Run the retrain flow (ingest, teacher, cache, distill, evaluate, register) for a config: a
    YAML path or a shipped name (`smoke`, `etth1`, ...), with `dotted.key=value` overrides."""
    from timedistill.flows.retrain import retrain as retrain_flow

    return retrain_flow(config=str(config), overrides=list(overrides), ray_address=ray_address)


def load_model(name: str, version: str | None = None, storage: str | Path = "./artifacts", *,
               endpoint_override: str | None = None) -> Predictor:
    """A registered student (LATEST unless `version`), ready to `predict` from a frame or an
    array in the data's units. `storage` is the storage root the registry lives under: a folder,
    or s3://bucket/prefix (with `endpoint_override` for S3-compatible stores)."""
    root = str(storage) if "://" in str(storage) else str(Path(storage).expanduser().resolve())
    return Predictor.load(Storage(root, endpoint_override), name, version)


def fit(frame: Any, horizon: int, config: str | Path = "smoke", *, name: str = "data",
        storage: str | Path | None = None, ray_address: str | None = None, quiet: bool = False,
        **overrides: Any) -> Predictor:
    """Train teachers and distill a student from an in-memory frame, register it, and return it
    ready to `predict` (as neuralforecast's `fit` does).

    `frame`: a Polars or pandas frame, wide (a time column and a column per variable) or long
    (unique_id, ds, y); its time column and layout are read off it, as for `--data FILE`.
    `config`: a YAML path or a shipped name (`smoke` is a quick look: tiny models, one epoch);
    its data section's own file, name and columns are replaced by the frame's. The model is
    registered as `<name>-<horizon>` under `storage` (default: the config's storage.root) and the
    gate is `always` unless overridden. `overrides`: config sections as mappings
    (`teacher={"epochs": 3}`) or fields of `data` (`lookback=96`). The frame is written to
    `<storage>/sources/<name>/` as Parquet: the run's data, fingerprinted like any file.
    Runs the pipeline's steps in this process, without a Prefect server (as `timedistill
    teacher` and `distill` do)."""
    from timedistill.conf import Config, DataConfig, load_config
    from timedistill.conf.loading import data_file_overrides, storage_root
    from timedistill.flows.progress import StepProgress
    from timedistill.flows.retrain import run_steps
    from timedistill.store.contract import is_frame, to_polars
    from timedistill.tasks.errors import StepError

    if not is_frame(frame):
        raise TypeError(f"fit() takes a Polars or pandas frame, not {type(frame).__name__}")
    sets = [f"data.horizons=[{int(horizon)}]", "registry.gate=always"]
    for key, value in overrides.items():
        if key in Config.model_fields and isinstance(value, dict):
            sets += [f"{key}.{field}={json.dumps(item)}" for field, item in value.items()]
        elif key in DataConfig.model_fields:
            sets.append(f"data.{key}={json.dumps(value)}")
        else:
            raise TypeError(f"fit() got an unexpected keyword {key!r}: give a config section as a mapping "
                            f"({', '.join(Config.model_fields)}) or a field of data")
    if storage is not None:
        sets.append(f"storage.root={json.dumps(str(storage))}")
    settings = load_config(config, sets)
    store = Storage(storage_root(settings), settings.storage.endpoint_override)
    buffer = io.BytesIO()
    to_polars(frame).write_parquet(buffer)
    source = f"sources/{name}/{hashlib.sha256(buffer.getvalue()).hexdigest()[:16]}.parquet"
    if not store.exists(source):
        store.write_bytes(source, buffer.getvalue())
    sets = [*data_file_overrides(store.uri(source), settings.data), f"data.name={json.dumps(name)}", *sets]
    with StepProgress(enabled=not quiet) as terminal:
        summary = run_steps(str(config), sets, ray_address, terminal=terminal)
    (registration,) = summary.models
    if registration.version is None:
        raise StepError(f"{registration.name} was not registered: {registration.reason}")
    return Predictor.load(store, registration.name, registration.version)
