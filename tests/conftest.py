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
    from timedistill.store.records import (
        Cache,
        Dataset,
        HorizonTeachers,
        Registration,
        ResultRow,
        RunSummary,
        StudentsRun,
        Teacher,
    )
    from timedistill.store.storage import Storage
    from timedistill.tasks.steps import RunContext

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
def postgres():
    """One PostgreSQL server of the tests' own for the session (tests/postgres.py); each test
    makes tables of its own names in it."""
    from tests.postgres import binary, running_postgres

    try:
        binary("initdb")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with running_postgres() as server:
        yield server


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
    run: RunContext  # to call steps with, as the flow does
    dataset: Dataset
    teachers: HorizonTeachers
    teacher: Teacher  # the one of them
    cache: Cache
    students: StudentsRun
    row: ResultRow
    summary: RunSummary  # what the flow returned

    @property
    def storage(self) -> Storage:
        return self.run.storage

    @property
    def run_dir(self) -> str:
        return self.run.run_dir(self.dataset)


@pytest.fixture(scope="session")
def smoke_pipeline(smoke_run, session_root, smoke_csv):
    """The smoke run's artifacts as objects (every lookup hits what the flow stored)."""
    from timedistill.conf import load_config
    from timedistill.tasks.evaluate import compare
    from timedistill.tasks.steps import RunContext, cache_step, distill_step, ingest_step, teacher_step

    config = load_config("smoke", smoke_overrides(session_root, smoke_csv))
    with RunContext(config) as run:
        dataset = ingest_step(run)
        teachers = teacher_step(run, dataset, 24)
        caches = cache_step(run, dataset, teachers)
        students = distill_step(run, dataset, teachers, caches)
        teacher = teachers.chosen
        yield SmokeArtifacts(config=config, run=run, dataset=dataset, teachers=teachers, teacher=teacher,
                             cache=caches.caches[0], students=students, row=compare(teacher, students),
                             summary=smoke_run)


@dataclass(frozen=True)
class QuantileRun:
    """The smoke pipeline with student.quantiles, registered in a storage root of its own."""

    root: Path
    config: Config
    students: StudentsRun
    row: ResultRow
    model: str  # its registered name


def run_steps(config: Config, register: bool = False) -> tuple[RunContext, Dataset, HorizonTeachers, StudentsRun,
                                                                ResultRow, Registration | None]:
    """The flow's steps up to evaluation (and registration) for one horizon, without Prefect."""
    from timedistill.tasks.steps import (
        RunContext,
        cache_step,
        distill_step,
        evaluate_step,
        ingest_step,
        register_step,
        teacher_step,
    )

    with RunContext(config) as run:
        dataset = ingest_step(run)
        teachers = teacher_step(run, dataset, config.data.horizons[0])
        students = distill_step(run, dataset, teachers, cache_step(run, dataset, teachers))
        (row,) = evaluate_step(run, dataset, [teachers], [students]).rows
        registration = register_step(run, dataset, students, row) if register else None
    return run, dataset, teachers, students, row, registration


@pytest.fixture(scope="session")
def quantile_run(ray_local, tmp_path_factory, smoke_csv):
    """The smoke config with `student.quantiles: [0.1, 0.5, 0.9]`, every step up to registration
    (no Prefect), in a root of its own so that the shared registry keeps its one model."""
    from timedistill.conf import load_config

    root = tmp_path_factory.mktemp("quantiles")
    config = load_config("smoke", [*smoke_overrides(root, smoke_csv), "student.quantiles=[0.1, 0.5, 0.9]"])
    _, _, _, students, row, registration = run_steps(config, register=True)
    return QuantileRun(root=root, config=config, students=students, row=row, model=registration.name)


@pytest.fixture(scope="session")
def two_teachers_root(tmp_path_factory) -> Path:
    """A storage root shared by the tests of teacher.name auto and teacher.names, which train the
    same two small teachers (dlinear and itransformer at the ettm1 preset): the second reuses them."""
    return tmp_path_factory.mktemp("two-teachers")
