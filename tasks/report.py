"""The run's reports: metrics.json (every number), report.md (teacher vs student vs MLP), and
forecast.png (a few test windows of the target variable, in the data's own units)."""

from __future__ import annotations

import io
from statistics import mean
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no display and no global state needed

from tasks.ingest import Dataset
from tasks.storage import Storage
from tasks.students import Students
from tasks.teacher import Teacher, load_standardized, load_teacher
from tasks.windows import WindowBatcher, unstandardize, window_starts

ROLES = (("teacher", "teacher"), ("student", "distilled student"), ("baseline", "MLP baseline"))


def report_markdown(dataset: str, run_id: str, rows: list[dict[str, Any]]) -> str:
    """The results table per horizon, then the averages over horizons."""
    lines = [f"# {dataset}: teacher vs distilled student vs MLP baseline", "",
             f"Run `{run_id}`. Test split, standardized space (MSE/MAE over every element of every window). "
             "Gains are the student's MSE reduction; latency is the median forward pass on a batch of 32 "
             f"on {rows[0]['device'] if rows else 'the training device'}.", "",
             "| horizon | model | MSE | MAE | params | latency ms | student gain | speed-up | param ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for role, label in ROLES:
            if role not in row:
                continue
            m = row[role]
            gain = speed = ratio = ""
            if role == "student":
                gain = f"{row.get('student_vs_baseline_pct', float('nan')):+.1f}% vs MLP, " \
                       f"{row['student_vs_teacher_pct']:+.1f}% vs teacher"
                speed = f"{row['speedup']:.1f}x" if row.get("speedup") else ""
                ratio = f"{row['param_ratio']:.1f}x fewer"
            lines.append(f"| {row['horizon']} | {label} ({m['name']}) | {m['test_mse']:.4f} | {m['test_mae']:.4f} | "
                         f"{m['params']:,} | {m['latency_ms']:.2f} | {gain} | {speed} | {ratio} |")
    if len(rows) > 1:
        lines += ["", "Average over horizons:", "", "| model | MSE | MAE |", "|---|---|---|"]
        for role, label in ROLES:
            if all(role in row for row in rows):
                lines.append(f"| {label} | {mean(r[role]['test_mse'] for r in rows):.4f} | "
                             f"{mean(r[role]['test_mae'] for r in rows):.4f} |")
    return "\n".join(lines) + "\n"


@torch.inference_mode()
def forecast_figure(storage: Storage, dataset: Dataset, pairs: list[tuple[Teacher, Students]],
                    windows: int = 3) -> bytes:
    """PNG: history, truth and each model's forecast of the target for a few test windows."""
    series = load_standardized(storage, dataset)
    scaler = dataset.manifest["scaler"]
    target = len(dataset.variables) - 1  # the target is the last variable
    fig = Figure(figsize=(5 * windows, 3.2 * len(pairs)))
    axes = fig.subplots(len(pairs), windows, squeeze=False)
    for row, (teacher, students) in enumerate(pairs):
        lookback, horizon = teacher.meta["lookback"], teacher.meta["horizon"]
        starts = window_starts(tuple(dataset.manifest["splits"]["test"]), lookback, horizon)
        chosen = starts[np.linspace(0, len(starts) - 1, windows).astype(int)]
        x, y = WindowBatcher(series, lookback, horizon)(chosen)
        forecasts = {"teacher": load_teacher(storage, teacher)(x).prediction}
        for role in students.meta["models"]:
            forecasts[role] = students.load(storage, role)(x).prediction

        def units(values: torch.Tensor) -> np.ndarray:
            return unstandardize(values.numpy().astype(np.float64), scaler)[..., target]

        history = min(lookback, 2 * horizon)
        for col in range(windows):
            ax = axes[row][col]
            past = np.arange(-history, 0)
            future = np.arange(horizon)
            ax.plot(past, units(x[col])[-history:], color="0.5", lw=1, label="history")
            ax.plot(future, units(y[col]), color="black", lw=1.5, label="truth")
            for (role, label), color in zip(ROLES, ("tab:orange", "tab:blue", "tab:green"), strict=True):
                if role in forecasts:
                    ax.plot(future, units(forecasts[role][col]), color=color, lw=1.2, label=label)
            ax.axvline(0, color="0.8", lw=0.8)
            ax.set_title(f"{dataset.name} h={horizon}, test window from row {int(chosen[col])}", fontsize=9)
            ax.set_ylabel(dataset.variables[target], fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_reports(storage: Storage, run_dir: str, dataset: Dataset, run_id: str,
                  pairs: list[tuple[Teacher, Students]], rows: list[dict[str, Any]]) -> dict[str, str]:
    """report.md and forecast.png in the run folder (each written atomically)."""
    storage.write_bytes(f"{run_dir}/report.md", report_markdown(dataset.name, run_id, rows).encode())
    storage.write_bytes(f"{run_dir}/forecast.png", forecast_figure(storage, dataset, pairs))
    return {"report": storage.uri(f"{run_dir}/report.md"), "forecast": storage.uri(f"{run_dir}/forecast.png")}
