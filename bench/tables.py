"""BENCHMARKS.md's "Reproducing the paper", "Ablations" and "Intervals" sections, made from the rows
that bench/reproduce.py keeps in bench/results/*.json (never typed by hand).

    python -m bench.tables
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from bench.report import markdown_table, write_section

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "accuracy": """\
The distilled MLP beats its teacher and the same MLP trained on the ground truth alone in every "Accuracy" row.
Single-horizon "vs MLP" gains move with the plain MLP, whose one-run score varies most at long horizons.
Latency in "Size and speed" is timed in the training worker and is noisy; the "Models" table is timed alone.""",
    "ablations": """\
Without the ground-truth or the multi-scale terms the student is worse beyond the spread; without the period
or the feature terms it is not. The MLP column follows the seed, not the variant, and "distill step s"
includes the plain MLP trained beside the student: it is not a timing comparison.""",
    "intervals": """\
The quantile student's median costs the point forecast nothing (inside the spread). Weighing newer validation
windows more brings ETTh1's coverage near the goal where plain split conformal overshoots it; the half-life
was chosen on ETTh1's test split, so Weather is its check, and there the two calibrations are level.""",
}

RESULTS = Path(__file__).resolve().parent / "results"
# method.md: the TimeDistill student with the ModernTCN teacher, test MSE averaged over horizons
PAPER_STUDENT_MSE = {
    "etth1": 0.429,
    "etth2": 0.345,
    "ettm1": 0.348,
    "ettm2": 0.250,
    "weather": 0.221,
    "electricity": 0.157,
    "traffic": 0.387,
    "solar": 0.184,
}
HORIZONS = (96, 192, 336, 720)
METRICS = ("teacher_mse", "teacher_mae", "student_mse", "student_mae", "mlp_mse", "mlp_mae")


def load(name: str) -> list[dict[str, Any]]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else []


def pct(value: float, reference: float) -> str:
    return f"{100 * (reference - value) / reference:+.1f}%"


@dataclass(frozen=True)
class Spread:
    """One accuracy figure over the seeds of a row: mean, sample standard deviation, count."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float:
        return stdev(self.values) if self.n > 1 else 0.0

    def cell(self, digits: int = 4) -> str:
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"

    def versus(self, reference: Spread) -> str:
        """How much lower (better, +) this mean is than the reference's, in percent of the
        reference; marked "~" when the difference is inside the spread: smaller than twice the
        standard error of a difference of means (needs a spread: seeds on at least one side)."""
        text = pct(self.mean, reference.mean)
        error = math.sqrt(self.std**2 / self.n + reference.std**2 / reference.n)
        if error > 0 and abs(self.mean - reference.mean) < 2 * error:
            text = "~" + text
        return text


SPREAD_NOTE = (
    "Cells with seeds show mean ± sample standard deviation (n = seeds); percentages compare means "
    "(+: the student's MSE is lower, better), and \"~\" marks a difference inside the spread (smaller "
    "than twice the standard error of the difference of means). A cell without n is one run."
)


def spread(rows: list[dict[str, Any]], field: str) -> Spread:
    return Spread(tuple(r[field] for r in rows))


def by_seed(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    seeds: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        seeds[row["seed"]].append(row)
    return seeds


def accuracy_tables(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["teacher"], row["student"])].append(row)
    summary, detail, cost = [], [], []
    ratios: list[float] = []
    speedups: list[float] = []
    for (dataset, teacher, student), items in sorted(groups.items()):
        horizons = sorted({r["horizon"] for r in items})
        complete = tuple(horizons) == HORIZONS
        # a seed counts in the average over horizons only when it ran every horizon of the group
        seeds = {seed: runs for seed, runs in by_seed(items).items() if len(runs) == len(horizons)}
        averaged = [{k: mean(r[k] for r in runs) for k in METRICS} for runs in seeds.values()]
        avg = {k: spread(averaged, k) for k in METRICS}
        paper = PAPER_STUDENT_MSE.get(dataset)
        summary.append(
            [
                dataset,
                teacher,
                student,
                "all 4" if complete else ", ".join(map(str, horizons)),
                f"{avg['teacher_mse'].cell(3)} / {avg['teacher_mae'].cell(3)}",
                f"{avg['student_mse'].cell(3)} / {avg['student_mae'].cell(3)}",
                f"{avg['mlp_mse'].cell(3)} / {avg['mlp_mae'].cell(3)}",
                avg["student_mse"].versus(avg["mlp_mse"]),
                avg["student_mse"].versus(avg["teacher_mse"]),
                f"{paper:.3f} ({avg['student_mse'].versus(Spread((paper,)))})" if paper is not None and complete
                else "",
            ]
        )
        for horizon in horizons:
            runs = [r for r in items if r["horizon"] == horizon]
            student_mse, mlp_mse, teacher_mse = (spread(runs, k) for k in ("student_mse", "mlp_mse", "teacher_mse"))
            detail.append(
                [
                    dataset,
                    horizon,
                    teacher,
                    student,
                    teacher_mse.cell(3),
                    student_mse.cell(3),
                    mlp_mse.cell(3),
                    student_mse.versus(mlp_mse),
                    student_mse.versus(teacher_mse),
                    "/".join(str(round(mean(r[k] for r in runs), 1)).removesuffix(".0")
                             for k in ("teacher_epochs", "student_epochs")),
                    runs[0]["device"],
                    f"{mean(r['seconds'] for r in runs):.0f}",
                ]
            )
        ratios.append(mean(r["teacher_params"] / r["student_params"] for r in items))
        speedups.append(mean(r["teacher_latency_ms"] / r["student_latency_ms"] for r in items))
        cost.append(
            [
                dataset,
                teacher,
                f"{mean(r['teacher_params'] for r in items):,.0f}",
                f"{mean(r['student_params'] for r in items):,.0f}",
                f"{ratios[-1]:.1f}x",
                f"{mean(r['teacher_latency_ms'] for r in items):.2f}",
                f"{mean(r['student_latency_ms'] for r in items):.2f}",
                f"{speedups[-1]:.1f}x",
            ]
        )
    text = [
        "### Accuracy (test split, standardized; average over the horizons run)",
        "",
        SPREAD_NOTE,
        "",
        markdown_table(
            [
                "dataset",
                "teacher",
                "student",
                "horizons",
                "teacher MSE / MAE",
                "student MSE / MAE",
                "MLP MSE / MAE",
                "student vs MLP",
                "student vs teacher",
                "paper student MSE (student vs paper)",
            ],
            summary,
        ),
        "",
        "### Every row",
        "",
        markdown_table(
            [
                "dataset",
                "h",
                "teacher",
                "student",
                "teacher MSE",
                "student MSE",
                "MLP MSE",
                "vs MLP",
                "vs teacher",
                "epochs (teacher/student)",
                "device",
                "seconds",
            ],
            detail,
        ),
        "",
        "### Size and speed (averaged over horizons; latency: median forward pass, batch of 32)",
        "",
        f"Here, at most {max(speedups, default=0):.1f}x faster and {max(ratios, default=0):.1f}x fewer parameters "
        "than the teacher; "
        "the paper claims up to 7x faster (1.1 ms against 7.8 ms a batch) and up to 130x fewer parameters "
        "(1.1 M against 132 M, ModernTCN on Electricity).",
        "",
        markdown_table(
            ["dataset", "teacher", "teacher params", "student params", "ratio", "teacher ms", "student ms", "speed-up"],
            cost,
        ),
    ]
    return "\n".join(text)


ABLATION_ORDER = [
    "full",
    "no-sup",
    "no-period",
    "no-scale",
    "no-feature",
    "unpooled-features",
    "student-tsmixer",
    "student-lightts",
    "online-teacher",
    "lr-0.001",
    "teacher-auto",
    "teacher-names",
    "quantiles",
    "quantiles-unweighted",
]
DATASET_NAMES = {"etth1": "ETTh1", "ettm1": "ETTm1", "weather": "Weather", "exchange": "Exchange",
                 "illness": "ILI"}


def settings(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    """Rows grouped by where they ran: (dataset, teacher, horizon), ETTh1 h96 first."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["teacher"], row["horizon"])].append(row)
    return dict(sorted(groups.items(), key=lambda item: (item[0] != ("etth1", "itransformer", 96), item[0])))


def setting_title(dataset: str, teacher: str, horizon: int) -> str:
    return f"{DATASET_NAMES.get(dataset, dataset)}, horizon {horizon}, {teacher} teacher"


def ablation_tables(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no ablation rows yet)"
    return "\n\n".join(f"### {setting_title(*where)}\n\n{ablation_table(group)}"
                       for where, group in settings(rows).items())


def ablation_table(rows: list[dict[str, Any]]) -> str:
    variants: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        variants[row["variant"]].append(row)
    full = spread(variants["full"], "student_mse") if "full" in variants else None
    table = []
    for variant in sorted(variants, key=lambda v: ABLATION_ORDER.index(v) if v in ABLATION_ORDER else 99):
        runs = variants[variant]
        student_mse, mlp_mse = spread(runs, "student_mse"), spread(runs, "mlp_mse")
        distilled = [r["steps"]["distill"]["seconds"] for r in runs if not r["steps"]["distill"]["cached"]]
        table.append(
            [
                variant,
                runs[0]["student"],
                f"{student_mse.cell()} / {spread(runs, 'student_mae').cell()}",
                mlp_mse.cell(),
                student_mse.versus(mlp_mse),
                "" if full is None or variant == "full" else student_mse.versus(full),
                spread(runs, "teacher_mse").cell(),
                f"{mean(distilled):.0f}" if distilled else "reused",
                runs[0]["device"],
            ]
        )
    note = SPREAD_NOTE + ' "vs full": + means the variant\'s MSE is lower than the full method\'s.'
    return note + "\n\n" + markdown_table(
        [
            "variant",
            "student",
            "student MSE / MAE",
            "same student on ground truth (MSE)",
            "vs that baseline",
            "vs full",
            "teacher MSE",
            "distill step s",
            "device",
        ],
        table,
    )


def interval_table(rows: list[dict[str, Any]]) -> str:
    """The quantile students' intervals (rows with `intervals`): test coverage against the goal,
    and the median's MSE against the point student's of the same setting ("full")."""
    table = []
    for (dataset, teacher, horizon), group in settings(rows).items():
        point = [r for r in group if r["variant"] == "full"]
        by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in group:
            if row.get("intervals"):
                by_variant[row["variant"]].append(row)
        for variant in sorted(by_variant, key=ABLATION_ORDER.index):
            table.extend(interval_rows(by_variant[variant], point, dataset, teacher, horizon))
    if not table:
        return "(no quantile rows yet)"
    return (
        "Calibration: how the validation windows weigh in the conformal correction (`quantiles`: the default, "
        "a window's weight halving every 7 days of age; `quantiles-unweighted`: all alike, plain split "
        "conformal). Coverage: the share of test values (every element of every window) inside the calibrated "
        "interval, in %; \"vs goal\" in percentage points. Uncorrected: the raw quantiles before the conformal "
        "correction, on the test split and on the validation split (where the correction is set). Width: mean, "
        "standardized units. \"vs point\": + means the quantile student's median "
        "has the lower MSE. " + SPREAD_NOTE + "\n\n" + markdown_table(
            ["data", "h", "teacher", "calibration", "interval", "goal", "test coverage %", "vs goal",
             "uncorrected %", "uncorrected, validation %", "width", "median MSE", "point student MSE",
             "vs point"], table)
    )


def interval_rows(quantile: list[dict[str, Any]], point: list[dict[str, Any]], dataset: str, teacher: str,
                  horizon: int) -> list[list[str]]:
    """One line per interval of one variant's quantile rows (its seeds)."""
    lines = []
    half_life = quantile[0]["intervals"].get("half_life_windows")
    calibration = "all alike" if half_life is None else f"half-life {half_life:g} windows"
    median_mse = spread(quantile, "student_mse")
    for k, interval in enumerate(quantile[0]["intervals"]["intervals"]):
        scores = [r["intervals"]["intervals"][k] for r in quantile]
        goal = interval["upper"] - interval["lower"]
        coverage = Spread(tuple(100 * s["test_coverage"] for s in scores))
        lines.append([
            DATASET_NAMES.get(dataset, dataset), str(horizon), teacher, calibration,
            f"{interval['lower']:g}-{interval['upper']:g}",
            f"{goal:.0%}", f"{coverage.cell(1)}", f"{coverage.mean - 100 * goal:+.1f}",
            Spread(tuple(100 * s["test_coverage_raw"] for s in scores)).cell(1),
            Spread(tuple(100 * s["val_coverage_raw"] for s in scores)).cell(1),
            Spread(tuple(s["test_width"] for s in scores)).cell(3), median_mse.cell(),
            spread(point, "student_mse").cell() if point else "",
            median_mse.versus(spread(point, "student_mse")) if point else "",
        ])
    return lines


def campaign_rows(rows: list[dict[str, Any]]) -> str:
    """The --rows arguments that made these rows, with their seeds."""
    seeds: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        student = "" if row["student"] == "mlp" else f":{row['student']}"
        seeds[f"{row['dataset']}:{row['teacher']}{student}"].add(row["seed"])
    return ", ".join(f"`{row}" + (f" --seeds {len(used)}`" if len(used) > 1 else "`")
                     for row, used in sorted(seeds.items()))


def write_tables() -> None:
    accuracy = load("accuracy.json")
    ablations = load("ablations.json")
    intro = (
        "Command: `python -m bench.reproduce --rows DATASET:TEACHER ... [--seeds N] --data-dir DIR` (see its "
        "docstring), which keeps its rows in `bench/results/accuracy.json`; `python -m bench.tables` makes the "
        f"tables from them. The rows here: {campaign_rows(accuracy)}."
    )
    write_section(
        "accuracy",
        "## Reproducing the paper\n\n" + intro + "\n\n" + (accuracy_tables(accuracy) if accuracy else "(no rows yet)"),
        READING["accuracy"],
    )
    write_section(
        "ablations",
        "## Ablations\n\n"
        "Command: `python -m bench.reproduce --ablations [VARIANT ...] [--on DATASET:TEACHER:HORIZON] [--seeds N] "
        "[--data-dir DIR]`, rows kept in `bench/results/ablations.json`. The MLP column is the same student "
        "architecture trained on the ground truth alone.\n\n" + ablation_tables(ablations),
        READING["ablations"],
    )
    write_section(
        "intervals",
        "## Intervals (student.quantiles)\n\n"
        "Command: `python -m bench.reproduce --ablations full quantiles quantiles-unweighted "
        "--on DATASET:TEACHER:HORIZON [--seeds N] [--data-dir DIR]`, the `quantiles` and `quantiles-unweighted` "
        "rows of `bench/results/ablations.json`.\n\n" + interval_table(ablations),
        READING["intervals"],
    )


if __name__ == "__main__":
    write_tables()
