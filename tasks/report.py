"""The run's reports: report.md (teacher vs student vs MLP), forecast.png (a few test windows of the
last variable, data.target where one is set, in the data's own units, dated) and training.png
(loss and validation MSE per epoch of each model)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from statistics import mean

import numpy as np
import torch
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure  # no pyplot: no display and no global state needed

from timedistill.models import QuantileStudent
from timedistill.store.records import Dataset, Epoch, ResultRow, StudentsRun, Teacher, TeacherChoice, TeacherSet
from timedistill.store.series import series_timestamps
from timedistill.store.storage import Storage
from timedistill.store.weights import load_teacher, load_trained
from timedistill.tasks.windows import WindowBatcher, window_starts

LABELS = {"teacher": "teacher", "student": "distilled student", "baseline": "MLP baseline"}
FEW_EPOCHS = 3  # models trained fewer epochs than this have scores that say little about the method
COLORS = {"teacher": "tab:orange", "student": "tab:blue", "baseline": "tab:green"}


def change(gain_pct: float | None) -> str:
    """A gain in words that cannot be read backwards: '7.4% better', '5.0% worse'."""
    if gain_pct is None:
        return ""
    if round(gain_pct, 1) == 0:
        return "the same"
    return f"{abs(gain_pct):.1f}% {'better' if gain_pct > 0 else 'worse'}"


def few_epochs(rows: list[ResultRow]) -> str | None:
    """A word under a comparison whose models trained too few epochs for it to mean anything."""
    names = {"teacher": "teacher", "student": "student", "baseline": "MLP"}
    short = [f"{names[role]} {score.epochs}" for row in rows for role, score in row.scores().items()
             if score.epochs < FEW_EPOCHS]
    if not short:
        return None
    return (f"few epochs ({', '.join(dict.fromkeys(short))}): these scores say little about accuracy; raise "
            "teacher.epochs and distill.epochs for a comparison that does")


def report_markdown(dataset: str, run_id: str, rows: list[ResultRow], choices: Sequence[TeacherChoice] = (),
                    sets: Sequence[TeacherSet] = ()) -> str:
    """The results per horizon, the averages over horizons, how each teacher was chosen (teacher.name
    auto) or weighed (teacher.names), and the plots."""
    lines = [f"# {dataset}: teacher vs distilled student vs plain MLP", "",
             f"Run `{run_id}`. Scores are on the test split, in the standardized space (each variable divided by "
             "its train-split standard deviation), over every element of every window; lower is better. The "
             "plots below are in the data's own units.", "",
             "| horizon | model | MSE | MAE | params | student vs MLP | student vs teacher |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        for role, score in row.scores().items():
            student = role == "student"
            lines.append(f"| {row.horizon} | {LABELS[role]} ({score.name}) | {score.test_mse:.4f} | "
                         f"{score.test_mae:.4f} | {score.params:,} | "
                         f"{change(row.student_vs_baseline_pct) if student else ''} | "
                         f"{change(row.student_vs_teacher_pct) if student else ''} |")
    if (caveat := few_epochs(rows)) is not None:
        lines += ["", f"*{caveat[0].upper()}{caveat[1:]}.*"]
    lines += ["", *[f"At horizon {row.horizon} the student has {size(row.param_ratio)} parameters than the teacher"
                    + latency_sentence(row) for row in rows]]
    if len(rows) > 1:
        lines += ["", "Average over horizons:", "", "| model | MSE | MAE |", "|---|---|---|"]
        for role, label in LABELS.items():
            scores = [found for row in rows if (found := row.scores().get(role)) is not None]
            if len(scores) == len(rows):
                lines.append(f"| {label} | {mean(s.test_mse for s in scores):.4f} | "
                             f"{mean(s.test_mae for s in scores):.4f} |")
    intervals = [(row.horizon, interval) for row in rows if row.intervals for interval in row.intervals.intervals]
    if intervals:
        method = next(row.intervals.method for row in rows if row.intervals)
        lines += ["", f"The student's intervals (student.quantiles), calibrated on the validation split ({method}); "
                  "test coverage against the goal, and mean width (standardized):", "",
                  "| horizon | interval | goal | test coverage | uncorrected | mean width |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {horizon} | {i.lower:g}-{i.upper:g} | {i.goal:.0%} | {i.test_coverage:.1%} | "
                  f"{i.test_coverage_raw:.1%} | {i.test_width:.3f} |" for horizon, i in intervals]
    if sets:
        lines += ["", f"The student learned from several teachers (teacher.names), their predictions combined by "
                  f"{sets[0].weighting}; the table above compares it with the best of them by validation MSE:", "",
                  "| horizon | teacher | val MSE | test MSE | weight |", "|---|---|---|---|---|"]
        lines += [f"| {ensemble.horizon} | {member.name} | {member.val_mse:.4f} | {member.test_mse:.4f} | "
                  f"{f'{weight:.3f}' if weight is not None else 'learned'} |"
                  for ensemble in sets
                  for member, weight in zip(ensemble.members, member_weights(ensemble), strict=True)]
    if choices:
        lines += ["", "Teachers chosen per horizon (teacher.name: auto) by the lowest validation MSE; the test "
                  "scores are shown, not used:", "", "| horizon | candidate | val MSE | test MSE | params | |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {choice.horizon} | {score.name} | {score.val_mse:.4f} | {score.test_mse:.4f} | {score.params:,} "
                  f"| {'chosen' if score.name == choice.chosen else ''} |"
                  for choice in choices for score in choice.candidates]
    lines += ["", "Forecasts of the last variable (data.target, where set) on a few test windows (data units):",
              "", "![forecasts](forecast.png)", "", "Training: each model's loss and validation MSE per epoch:", "",
              "![training](training.png)"]
    return "\n".join(lines) + "\n"


def member_weights(ensemble: TeacherSet) -> list[float | None]:
    """Each teacher's weight in the set, None where the weights are learned."""
    return list(ensemble.weights) if ensemble.weights else [None] * len(ensemble.members)


def latency_sentence(row: ResultRow) -> str:
    if row.latency_batch is None or not row.speedup:
        return "."
    return (f"; a forward pass of {row.latency_batch} windows ({row.latency_threads} thread, {row.device}) takes "
            f"{row.student.latency_ms:.2f} ms against the teacher's {row.teacher.latency_ms:.2f} ms "
            f"({row.speedup:.1f}x {'faster' if row.speedup >= 1 else 'slower'}).")


def size(param_ratio: float) -> str:
    """teacher params / student params in words, the right way round."""
    if param_ratio >= 1:
        return f"{param_ratio:.1f}x fewer"
    return f"{1 / param_ratio:.1f}x more"


def training_figure(teachers: list[Teacher], students: list[StudentsRun]) -> bytes:
    """PNG: per horizon, the training loss and the validation MSE of each model per epoch (from
    the histories teacher.json and students.json keep)."""
    fig = Figure(figsize=(10, 3.2 * len(teachers)))
    axes = fig.subplots(len(teachers), 2, squeeze=False)
    for row, (teacher, run) in enumerate(zip(teachers, students, strict=True)):
        histories: dict[str, list[Epoch]] = {"teacher": teacher.history,
                                             **{role: trained.history for role, trained in run.models.items()}}
        for col, (key, title) in enumerate((("train_loss", "training loss"), ("val_mse", "validation MSE"))):
            ax = axes[row][col]
            for role, history in histories.items():
                epochs = [logged.epoch for logged in history]
                ax.plot(epochs, [getattr(logged, key) for logged in history], marker="o", ms=3, color=COLORS[role],
                        label=LABELS[role])
            ax.set_title(f"h={teacher.horizon}: {title}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


@torch.inference_mode()
def forecast_figure(storage: Storage, dataset: Dataset, series: np.ndarray, teachers: list[Teacher],
                    students: list[StudentsRun], windows: int = 3) -> bytes:
    """PNG: history, truth and each model's forecast of the last variable for a few test windows
    (`series`: the standardized series the caller already holds)."""
    times = series_timestamps(storage, dataset)
    target = len(dataset.variables) - 1  # data.target, when set, is the last variable
    fig = Figure(figsize=(5 * windows, 3.2 * len(teachers)))
    axes = fig.subplots(len(teachers), windows, squeeze=False)
    for row, (teacher, run) in enumerate(zip(teachers, students, strict=True)):
        lookback, horizon = teacher.lookback, teacher.horizon
        starts = window_starts(dataset.splits["test"], lookback, horizon)
        chosen = starts[np.linspace(0, len(starts) - 1, windows).astype(int)]
        x, y = WindowBatcher(series, lookback, horizon)(chosen)
        forecasts = {"teacher": load_teacher(storage, teacher)(x).prediction}
        bands = None  # the student's quantiles [B, Q, S, C], with student.quantiles
        for role in run.models:
            model = load_trained(storage, run, role)
            forecasts[role] = model(x).prediction
            if isinstance(model, QuantileStudent):
                bands = model.quantiles(x)[1]

        def units(values: torch.Tensor) -> np.ndarray:
            return dataset.scaler.unstandardize(values.numpy().astype(np.float64))[..., target]

        history = min(lookback, 2 * horizon)
        for col in range(windows):
            ax = axes[row][col]
            origin = int(chosen[col]) + lookback  # the row of the first forecast step
            past, future = times[origin - history : origin], times[origin : origin + horizon]
            ax.plot(past, units(x[col])[-history:], color="0.5", lw=1, label="history")
            ax.plot(future, units(y[col]), color="black", lw=1.5, label="truth")
            if bands is not None:  # central intervals, the widest the palest
                levels = run.student.quantiles
                for k in range(len(levels) // 2):
                    ax.fill_between(future, units(bands[col, k]), units(bands[col, -1 - k]), color=COLORS["student"],
                                    alpha=0.12 + 0.1 * k, lw=0,
                                    label=f"student {levels[-1 - k] - levels[k]:.0%} interval")
            for name, forecast in forecasts.items():
                ax.plot(future, units(forecast[col]), color=COLORS[name], lw=1.2, label=LABELS[name])
            ax.axvline(future[0], color="0.8", lw=0.8)
            ax.xaxis.set_major_locator(locator := AutoDateLocator())
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
            ax.set_title(f"{dataset.name} h={horizon}, forecast from {future[0].astype('datetime64[m]')}", fontsize=9)
            ax.set_ylabel(f"{dataset.variables[target]} (data units)", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
