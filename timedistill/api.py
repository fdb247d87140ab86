"""The library entry points: what `import timedistill` offers besides the HTTP client."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
