"""Evaluation: teacher vs distilled student vs plain-MLP baseline on the test split, as one
record per horizon (MSE and MAE over every element of every test window, standardized space)."""

from __future__ import annotations

from typing import Any

from tasks.students import Students
from tasks.teacher import Teacher

MODEL_FIELDS = ("name", "test_mse", "test_mae", "params", "latency_ms", "val_mse", "epochs")


def result_row(dataset: str, teacher: Teacher, students: Students) -> dict[str, Any]:
    """The comparison of one horizon, with the student's gains and the teacher/student ratios."""
    row: dict[str, Any] = {"dataset": dataset, "horizon": teacher.meta["horizon"],
                           "teacher": {k: teacher.meta[k] for k in MODEL_FIELDS}}
    for role, info in students.meta["models"].items():
        row[role] = {k: info[k] for k in MODEL_FIELDS}
    student, teach = row["student"], row["teacher"]
    row["student_vs_teacher_pct"] = gain(student["test_mse"], teach["test_mse"])
    if "baseline" in row:
        row["student_vs_baseline_pct"] = gain(student["test_mse"], row["baseline"]["test_mse"])
    row["param_ratio"] = teach["params"] / student["params"]
    row["speedup"] = teach["latency_ms"] / student["latency_ms"] if student["latency_ms"] else None
    row["device"] = students.meta["device"]
    return row


def gain(value: float, reference: float) -> float:
    """Relative MSE reduction in %: positive when `value` is better (lower) than `reference`."""
    return 100.0 * (reference - value) / reference
