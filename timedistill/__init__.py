"""TimeDistill as a library: retrain (distill) students, load a registered one, call a server.

    import timedistill

    summary = timedistill.retrain("conf/etth1.yaml", overrides=["data.horizons=[96]"])
    model = timedistill.load_model("etth1-96", storage="./artifacts")
    forecast = model.predict(frame)            # a Polars or pandas frame (by name), or an array
    model = timedistill.fit(frame, horizon=24, config="smoke")   # train from a frame of your own
    client = timedistill.Client("http://127.0.0.1:8000")

The heavy parts (torch, Ray, Prefect) load on first use, so `import timedistill` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("timedistill")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"

_API = {
    "retrain": "timedistill.api",
    "load_model": "timedistill.api",
    "fit": "timedistill.api",
    "Client": "timedistill.client",
    "AsyncClient": "timedistill.client",
}

__all__ = ["AsyncClient", "Client", "__version__", "fit", "load_model", "retrain"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'timedistill' has no attribute {name!r}")
