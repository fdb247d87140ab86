"""BENCHMARKS.md tables made from bench/results/*.json (never typed by hand).

python -m bench.tables
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

from bench.report import markdown_table, write_section

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


def load(name: str) -> list[dict[str, Any]]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else []


def pct(value: float, reference: float) -> str:
    return f"{100 * (reference - value) / reference:+.1f}%"


def accuracy_tables(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["teacher"], row["student"])].append(row)
    summary, detail, cost = [], [], []
    ratios: list[float] = []
    speedups: list[float] = []
    for (dataset, teacher, student), items in sorted(groups.items()):
        items.sort(key=lambda r: r["horizon"])
        horizons = [r["horizon"] for r in items]
        complete = tuple(horizons) == HORIZONS
        avg = {
            k: mean(r[k] for r in items)
            for k in ("teacher_mse", "teacher_mae", "student_mse", "student_mae", "mlp_mse", "mlp_mae")
        }
        paper = PAPER_STUDENT_MSE.get(dataset)
        summary.append(
            [
                dataset,
                teacher,
                student,
                "all 4" if complete else ", ".join(map(str, horizons)),
                f"{avg['teacher_mse']:.3f} / {avg['teacher_mae']:.3f}",
                f"{avg['student_mse']:.3f} / {avg['student_mae']:.3f}",
                f"{avg['mlp_mse']:.3f} / {avg['mlp_mae']:.3f}",
                pct(avg["student_mse"], avg["mlp_mse"]),
                pct(avg["student_mse"], avg["teacher_mse"]),
                f"{paper:.3f}" if paper is not None and complete else "",
            ]
        )
        for r in items:
            detail.append(
                [
                    dataset,
                    r["horizon"],
                    teacher,
                    student,
                    f"{r['teacher_mse']:.3f}",
                    f"{r['student_mse']:.3f}",
                    f"{r['mlp_mse']:.3f}",
                    pct(r["student_mse"], r["mlp_mse"]),
                    pct(r["student_mse"], r["teacher_mse"]),
                    f"{r['teacher_epochs']}/{r['student_epochs']}",
                    r["device"],
                    r["commit"],
                    f"{r['seconds']:.0f}",
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
                "paper student MSE",
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
                "commit",
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


def ablation_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no ablation rows yet)"
    order = [
        "full",
        "no-sup",
        "no-period",
        "no-scale",
        "no-feature",
        "student-tsmixer",
        "student-lightts",
        "online-teacher",
    ]
    rows = sorted(rows, key=lambda r: order.index(r["variant"]) if r["variant"] in order else 99)
    table = [
        [
            r["variant"],
            r["student"],
            f"{r['student_mse']:.4f} / {r['student_mae']:.4f}",
            f"{r['mlp_mse']:.4f}",
            pct(r["student_mse"], r["mlp_mse"]),
            f"{r['teacher_mse']:.4f}",
            "reused" if r["steps"]["distill"]["cached"] else f"{r['steps']['distill']['seconds']:.0f}",
            r["device"],
            r["commit"],
        ]
        for r in rows
    ]
    return markdown_table(
        [
            "variant",
            "student",
            "student MSE / MAE",
            "same student on ground truth (MSE)",
            "vs that baseline",
            "teacher MSE",
            "distill step s",
            "device",
            "commit",
        ],
        table,
    )


def write_tables() -> None:
    accuracy = load("accuracy.json")
    ablations = load("ablations.json")
    intro = (
        "Made by `python -m bench.tables` from `bench/results/accuracy.json`, written by "
        "`python -m bench.reproduce --rows ...` (see its docstring)."
    )
    write_section(
        "accuracy",
        "## Reproducing the paper\n\n" + intro + "\n\n" + (accuracy_tables(accuracy) if accuracy else "(no rows yet)"),
    )
    write_section(
        "ablations",
        "## Ablations on ETTh1, horizon 96 (iTransformer teacher)\n\n"
        "From `bench/results/ablations.json` (`python -m bench.reproduce --ablations`). The MLP column "
        "is the same student architecture trained on the ground truth alone.\n\n" + ablation_table(ablations),
    )


if __name__ == "__main__":
    write_tables()
