"""Shared fixtures: one local Ray for the whole test session (started on first use), and the
paths of the real benchmark data beside the clone."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, like CI) shared by every test that needs it."""
    import ray

    from tasks.runtime import LOCAL_RAY_ENV, quiet_ray_data

    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    quiet_ray_data()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def session_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")
