"""Shared fixtures: one local Ray and one Prefect test harness for the whole session (each
started on first use), and one real run of the retrain flow on the smoke config that the
training, flow, registry and serving tests all inspect."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # Ray and torch load when a fixture first needs them
    from timedistill.conf import Config
    from timedistill.store.records import Cache, ResultRow, RunSummary, StudentsRun, Teacher
    from timedistill.tasks.steps import Pipeline

ROOT = Path(__file__).resolve().parent.parent
SMOKE_ROWS = 800
# the folder of the benchmark files that do not ship (weather.csv, exchange_rate.csv, ...: data/README.md);
# the tests that read them skip when it is not set
BENCHMARK_DATA = "TIMEDISTILL_BENCHMARK_DATA"


@pytest.fixture
def benchmark_data() -> Path:
    """The folder named by TIMEDISTILL_BENCHMARK_DATA; the test skips when it is unset."""
    folder = os.environ.get(BENCHMARK_DATA)
    if not folder:
        pytest.skip(f"{BENCHMARK_DATA} is not set (the folder of the benchmark files, data/README.md)")
    if not Path(folder).is_dir():
        pytest.fail(f"{BENCHMARK_DATA}={folder}: no such folder")
    return Path(folder)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, like CI) shared by every test that needs it."""
    import ray

    from timedistill.tasks.runtime import quiet_ray_data, start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2)
    quiet_ray_data()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (sqlite) for the session."""
    from prefect.testing.utilities import prefect_test_harness

    import timedistill.flows  # noqa: F401  (sets the startup timeout before Prefect reads its settings)

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def session_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def smoke_csv(tmp_path_factory) -> Path:
    """The smoke rows of the shipped ETTh1 in a file of the test's own (tests may change it)."""
    path = tmp_path_factory.mktemp("data") / "smoke.csv"
    lines = (ROOT / "data" / "ETTh1.csv").read_text().splitlines()[: SMOKE_ROWS + 1]
    path.write_text("\n".join(lines) + "\n")
    return path


def smoke_overrides(root: Path, csv: Path) -> list[str]:
    return [f"storage.root={root}", f"data.path={csv}"]


@pytest.fixture(scope="session")
def smoke_run(ray_local, prefect_harness, session_root, smoke_csv):
    """The retrain flow, run once for real on the smoke config; returns its summary."""
    from timedistill.flows.retrain import retrain

    return retrain(config="smoke", overrides=smoke_overrides(session_root, smoke_csv))


@dataclass(frozen=True)
class SmokeArtifacts:
    """The smoke run's records, as its steps find them in storage."""

    config: Config
    pipe: Pipeline
    teacher: Teacher
    cache: Cache
    students: StudentsRun
    row: ResultRow
    summary: RunSummary  # what the flow returned


@pytest.fixture(scope="session")
def smoke_pipeline(smoke_run, session_root, smoke_csv):
    """The smoke run's artifacts as objects (every lookup hits what the flow stored)."""
    from timedistill.conf import load_config
    from timedistill.store.records import ResultRow
    from timedistill.tasks.steps import Pipeline

    config = load_config("smoke", smoke_overrides(session_root, smoke_csv))
    with Pipeline(config) as pipe:
        pipe.ingest()
        teacher = pipe.teacher(24)
        cache = pipe.cache(teacher)
        students = pipe.students(teacher, cache)
        yield SmokeArtifacts(config=config, pipe=pipe, teacher=teacher, cache=cache, students=students,
                             row=ResultRow.compare(teacher, students), summary=smoke_run)


@dataclass(frozen=True)
class QuantileRun:
    """The smoke pipeline with student.quantiles, registered in a storage root of its own."""

    root: Path
    config: Config
    students: StudentsRun
    row: ResultRow
    model: str  # its registered name


@pytest.fixture(scope="session")
def quantile_run(ray_local, tmp_path_factory, smoke_csv):
    """The smoke config with `student.quantiles: [0.1, 0.5, 0.9]`, every step up to registration
    (no Prefect), in a root of its own so that the shared registry keeps its one model."""
    from timedistill.conf import load_config
    from timedistill.tasks.steps import Pipeline

    root = tmp_path_factory.mktemp("quantiles")
    config = load_config("smoke", [*smoke_overrides(root, smoke_csv), "student.quantiles=[0.1, 0.5, 0.9]"])
    with Pipeline(config) as pipe:
        pipe.ingest()
        teacher = pipe.teacher(24)
        students = pipe.students(teacher, pipe.cache(teacher))
        (row,) = pipe.evaluate([teacher], [students]).rows
        registration = pipe.register(students, row)
    return QuantileRun(root=root, config=config, students=students, row=row, model=registration.name)


@pytest.fixture(scope="session")
def two_teachers_root(tmp_path_factory) -> Path:
    """A storage root shared by the tests of teacher.name auto and teacher.names, which train the
    same two small teachers (dlinear and itransformer at the ettm1 preset): the second reuses them."""
    return tmp_path_factory.mktemp("two-teachers")
