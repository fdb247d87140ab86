"""What the commands show: Rich tables and lines that read right at 80 columns on stdout (the
results, a dataset, the teachers, the drift check, the registry), notes on stderr, and the JSON
projections of `--json` (one object as the last stdout line)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the records load with the command that renders them
    from timedistill.conf import Config
    from timedistill.store.records import Dataset, RegistryEntry, ResultRow, RunSummary, Teacher
    from timedistill.store.storage import Storage
    from timedistill.tasks.monitor import DriftReport

out = Console()
err = Console(stderr=True)
ROLE_NAMES = {"teacher": "teacher", "student": "student", "baseline": "MLP"}


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def print_ingest(dataset: Dataset, cfg: Config, storage: Storage) -> None:
    """What ingestion found, kept, filled and split."""
    from timedistill.tasks.windows import window_counts

    state = "reused (already ingested)" if dataset.cached else "ingested"
    out.print(f"[bold]{dataset.name}[/] {state}: {dataset.rows} rows x {len(dataset.variables)} variables, "
              f"step {dataset.step}")
    out.print(f"  {storage.uri(dataset.series_path)}")
    if dataset.cuts:
        out.print(f"  [yellow]{dataset.kept()}[/]", highlight=False)
    if dataset.found:
        out.print(f"  read off the file: {dataset.found}", highlight=False)
    if dataset.ignored_columns:
        out.print(f"  not read: {', '.join(dataset.ignored_columns)}", highlight=False)
    counts = {h: window_counts(dataset.splits, cfg.data.lookback, h) for h in cfg.data.horizons}
    table = Table("split", "rows", *[f"windows h={h}" for h in cfg.data.horizons])
    for split, (start, end) in dataset.splits.items():
        table.add_row(split, f"[{start}, {end})", *[str(counts[h][split]) for h in cfg.data.horizons])
    out.print(table)
    if dataset.previous is not None:
        history = f"history changed at {dataset.first_changed}" if dataset.history_changed else "history unchanged"
        out.print(f"  since the version ingested before ({dataset.previous}): {dataset.appended_rows} rows appended, "
                  f"{history}")
    missing = dataset.missing
    if missing.gaps or missing.values_filled or missing.duplicates_dropped:
        out.print(f"  filled ({missing.policy}): {missing.gaps} gaps ({missing.rows_inserted} rows "
                  f"inserted), {missing.values_filled} values; {missing.duplicates_dropped} "
                  f"repeated rows dropped")


def print_teachers(summary: RunSummary) -> None:
    table = Table("dataset", "horizon", "teacher", "params", "epochs", "val MSE", "test MSE", "test MAE")
    for t in summary.teachers:
        table.add_row(t.dataset, str(t.horizon), t.name, f"{t.params:,}", str(t.epochs), f"{t.val_mse:.4f}",
                      f"{t.test_mse:.4f}", f"{t.test_mae:.4f}")
    out.print(table)


def teachers_json(summary: RunSummary) -> dict[str, Any]:
    """`teacher --json`: a line per teacher, and how auto chose or names weighed them."""
    choices = [choice.to_json() for choice in summary.teacher_choices]  # teacher.name auto
    sets = [ensemble.to_json() for ensemble in summary.teacher_sets]  # teacher.names
    return ({"results": [teacher_record(summary, t) for t in summary.teachers]}
            | ({"teacher_choices": choices} if choices else {}) | ({"teacher_sets": sets} if sets else {}))


def teacher_record(summary: RunSummary, teacher: Teacher) -> dict[str, Any]:
    """A line of `teacher --json`."""
    return {"dataset": teacher.dataset, "horizon": teacher.horizon, "teacher": teacher.name,
            "checkpoint": summary.uri(teacher.weights_path), "val_mse": teacher.val_mse,
            "test_mse": teacher.test_mse, "test_mae": teacher.test_mae, "epochs": teacher.epochs,
            "params": teacher.params, "cached": teacher.cached}


def results_table(results: list[ResultRow]) -> Table:
    """Teacher, distilled student and plain MLP per horizon, narrow enough for 80 columns; the
    student's MSE against the others in words (better / worse)."""
    from timedistill.tasks.report import change

    teachers = "/".join(dict.fromkeys(row.teacher.name for row in results))  # teacher auto: one per horizon
    title = (f"{results[0].dataset}: {teachers} teacher -> {results[0].student.name} student, standardized test "
             "scores (lower is better)") if results else "no results"
    table = Table("h", "model", "MSE", "MAE", "params", "student vs MLP", "student vs teacher", box=box.SIMPLE_HEAD,
                  pad_edge=False, title=title, title_justify="left")
    for row in results:
        for role, score in row.scores().items():
            student = role == "student"
            table.add_row(str(row.horizon), ROLE_NAMES[role], f"{score.test_mse:.4f}", f"{score.test_mae:.4f}",
                          f"{score.params:,}", change(row.student_vs_baseline_pct) if student else "",
                          change(row.student_vs_teacher_pct) if student else "")
    return table


def print_results(results: list[ResultRow]) -> None:
    """The results table, and under it a word when its models trained too few epochs."""
    from timedistill.tasks.report import few_epochs

    out.print(results_table(results))
    if (caveat := few_epochs(results)) is not None:
        out.print(f"[yellow]{caveat}[/]", highlight=False)


def print_drift(reports: list[DriftReport]) -> None:
    table = Table("model", "version", "windows", "recent MSE", "at registration", "ratio", "drift")
    for report in reports:
        numbers = [f"{value:.4f}" if value is not None else "-" for value in
                   (report.mse_recent, report.mse_at_registration)]
        ratio = f"{report.ratio:.2f}x" if report.ratio is not None else "-"
        table.add_row(report.model, report.version or "-", str(report.windows), *numbers, ratio,
                      {True: "yes", False: "no", None: "-"}[report.drift])
    out.print(table)
    for report in reports:
        err.print(report.describe())
        if report.retrain:
            err.print(f"  retrain: {report.retrain}")


def print_models(store: Storage, entries: list[RegistryEntry], versions: dict[str, list[str]]) -> None:
    table = Table("model", "latest", "versions", "lookback", "horizon", "variables", "student MSE")
    for entry in entries:
        table.add_row(entry.model, entry.version, str(len(versions[entry.model])), str(entry.config.lookback),
                      str(entry.config.horizon), str(len(entry.config.variables)),
                      f"{entry.metrics.student.test_mse:.4f}")
    out.print(table)
    if not entries:
        err.print(f"no registered models under {store.uri('registry')}")


def print_model(entry: RegistryEntry, versions: list[str]) -> None:
    held = entry.config
    out.print(f"[bold]{entry.model_id}[/] (LATEST of {versions}): {held.student} student of a {held.teacher} "
              f"teacher, {held.dataset} data {held.data_fingerprint}, run {held.run_id}")
    out.print(f"  lookback {held.lookback}, horizon {held.horizon}, step {held.step}, variables "
              f"{', '.join(held.variables)}; registered {held.created}")
    print_results([entry.metrics])


def model_record(store: Storage, entry: RegistryEntry, versions: list[str]) -> dict[str, Any]:
    """A line of `models list --json`, and `models show --json`."""
    held = entry.config
    return {"name": entry.model, "version": entry.version, "versions": versions, "lookback": held.lookback,
            "horizon": held.horizon, "step": held.step, "variables": held.variables, "student": held.student,
            "teacher": held.teacher, "dataset": held.dataset, "data_fingerprint": held.data_fingerprint,
            "run_id": held.run_id, "created": held.created, "path": store.uri(entry.folder),
            "metrics": {role: score.to_json() for role, score in entry.metrics.headline().items()}}
