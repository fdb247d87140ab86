"""The run's reports: report.md (teacher vs student vs MLP) and forecast.png (a few test windows
of the target variable, in the data's own units)."""

from __future__ import annotations

import io
from statistics import mean

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: no display and no global state needed

from timedistill.store.records import Dataset, ResultRow, StudentsRun, Teacher
from timedistill.store.storage import Storage
from timedistill.tasks.windows import WindowBatcher, window_starts

LABELS = {"teacher": "teacher", "student": "distilled student", "baseline": "MLP baseline"}
COLORS = {"teacher": "tab:orange", "student": "tab:blue", "baseline": "tab:green"}


def report_markdown(dataset: str, run_id: str, rows: list[ResultRow]) -> str:
    """The results table per horizon, then the averages over horizons."""
    lines = [f"# {dataset}: teacher vs distilled student vs MLP baseline", "",
             f"Run `{run_id}`. Test split, standardized space (MSE/MAE over every element of every window). "
             "Gains are the student's MSE reduction; latency is the median forward pass on a batch of 32 "
             f"on {rows[0].device if rows else 'the training device'}.", "",
             "| horizon | model | MSE | MAE | params | latency ms | student gain | speed-up | param ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for role, score in row.scores().items():
            gain = speed = ratio = ""
            if role == "student":
                versus_mlp = row.student_vs_baseline_pct if row.student_vs_baseline_pct is not None else float("nan")
                gain = f"{versus_mlp:+.1f}% vs MLP, {row.student_vs_teacher_pct:+.1f}% vs teacher"
                speed = f"{row.speedup:.1f}x" if row.speedup else ""
                ratio = f"{row.param_ratio:.1f}x fewer"
            latency = f"{score.latency_ms:.2f}" if score.latency_ms is not None else ""
            lines.append(f"| {row.horizon} | {LABELS[role]} ({score.name}) | {score.test_mse:.4f} | "
                         f"{score.test_mae:.4f} | {score.params:,} | {latency} | {gain} | {speed} | {ratio} |")
    if len(rows) > 1:
        lines += ["", "Average over horizons:", "", "| model | MSE | MAE |", "|---|---|---|"]
        for role, label in LABELS.items():
            scores = [row.scores().get(role) for row in rows]
            if all(scores):
                lines.append(f"| {label} | {mean(s.test_mse for s in scores):.4f} | "
                             f"{mean(s.test_mae for s in scores):.4f} |")
    return "\n".join(lines) + "\n"


@torch.inference_mode()
def forecast_figure(storage: Storage, dataset: Dataset, teachers: list[Teacher], students: list[StudentsRun],
                    windows: int = 3) -> bytes:
    """PNG: history, truth and each model's forecast of the target for a few test windows."""
    series = dataset.standardized(storage)
    target = len(dataset.variables) - 1  # the target is the last variable
    fig = Figure(figsize=(5 * windows, 3.2 * len(teachers)))
    axes = fig.subplots(len(teachers), windows, squeeze=False)
    for row, (teacher, run) in enumerate(zip(teachers, students, strict=True)):
        lookback, horizon = teacher.lookback, teacher.horizon
        starts = window_starts(dataset.splits["test"], lookback, horizon)
        chosen = starts[np.linspace(0, len(starts) - 1, windows).astype(int)]
        x, y = WindowBatcher(series, lookback, horizon)(chosen)
        forecasts = {"teacher": teacher.load(storage)(x).prediction}
        for role in run.models:
            forecasts[role] = run.load(storage, role)(x).prediction

        def units(values: torch.Tensor) -> np.ndarray:
            return dataset.scaler.unstandardize(values.numpy().astype(np.float64))[..., target]

        history = min(lookback, 2 * horizon)
        for col in range(windows):
            ax = axes[row][col]
            past = np.arange(-history, 0)
            future = np.arange(horizon)
            ax.plot(past, units(x[col])[-history:], color="0.5", lw=1, label="history")
            ax.plot(future, units(y[col]), color="black", lw=1.5, label="truth")
            for role, forecast in forecasts.items():
                ax.plot(future, units(forecast[col]), color=COLORS[role], lw=1.2, label=LABELS[role])
            ax.axvline(0, color="0.8", lw=0.8)
            ax.set_title(f"{dataset.name} h={horizon}, test window from row {int(chosen[col])}", fontsize=9)
            ax.set_ylabel(dataset.variables[target], fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
