"""What the pipeline's steps hand each other, and what serving reads: one typed record per kind of
artifact, pure data, each serializing to the JSON file it is stored as (store/record.py writes and
reads those files, with the format they were written in).

    Dataset          datasets/<name>/<fingerprint>/manifest.json                ingest      data.py
    Teacher          teachers/<name>/<key>/teacher.json                         teacher     teachers.py
    HorizonTeachers  the teachers of a horizon (auto's choice, names' weights)  teacher     teachers.py
    Cache            cache/<key>/cache.json                                     cache       caches.py
    StudentsRun      runs/<name>/<run-id>/h<S>/students.json                    distill     students.py
    ResultRow        in runs/.../metrics.json and registry/.../metrics.json     evaluate    results.py
    Registration     in runs/.../metrics.json                                   register    registry.py
    RegistryEntry    registry/<model>/v<k>/config.json, scaler.json, metrics.json: what serving loads
    RunSummary       runs/<name>/<run-id>/metrics.json, and `timedistill retrain --json`     runs.py

Each record describes itself in one line (`describe()`) for the terminal, the logs and the report.
What is done with them (training, weighing, loading weights, comparing) belongs to the steps and
to store/weights.py and store/series.py, never to the records.
"""

from timedistill.store.records.caches import Cache, HorizonCaches
from timedistill.store.records.data import SERIES, Dataset, Lineage, Missing, RowCut, Watermark
from timedistill.store.records.models import Epoch, Headline, ModelScore, ModelSpec, TrainedModel, TrainingRun
from timedistill.store.records.registry import (
    ChampionDecision,
    RegisteredModel,
    Registration,
    RegistryEntry,
)
from timedistill.store.records.results import Evaluation, Latency, ResultRow, WindowRange
from timedistill.store.records.runs import RUN_CONFIG, CacheUse, RunSummary, StepTime
from timedistill.store.records.students import ROLES, Intervals, IntervalScore, Role, StudentsRun
from timedistill.store.records.teachers import TEACHER_WEIGHTS, HorizonTeachers, Teacher, TeacherChoice, TeacherSet

__all__ = [
    "ROLES",
    "RUN_CONFIG",
    "SERIES",
    "TEACHER_WEIGHTS",
    "Cache",
    "CacheUse",
    "ChampionDecision",
    "Dataset",
    "Epoch",
    "Evaluation",
    "Headline",
    "HorizonCaches",
    "HorizonTeachers",
    "IntervalScore",
    "Intervals",
    "Latency",
    "Lineage",
    "Missing",
    "ModelScore",
    "ModelSpec",
    "RegisteredModel",
    "Registration",
    "RegistryEntry",
    "ResultRow",
    "Role",
    "RowCut",
    "RunSummary",
    "StepTime",
    "StudentsRun",
    "Teacher",
    "TeacherChoice",
    "TeacherSet",
    "TrainedModel",
    "TrainingRun",
    "Watermark",
    "WindowRange",
]
