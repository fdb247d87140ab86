"""What a newcomer sees: a results table that fits 80 columns and says better or worse in
words, and a demo-sized run whose terminal holds our lines only (no Ray or Prefect noise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rich.console import Console

from tests.conftest import ROOT
from timedistill.flows.render import results_table
from timedistill.store.records import ResultRow
from timedistill.tasks.report import change

LEGACY = ROOT / "tests" / "fixtures" / "legacy" / "cli" / "retrain.json"


def rendered(rows: list[ResultRow]) -> str:
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(results_table(rows))
    return console.export_text()


def test_the_results_table_fits_80_columns_and_reads_one_way():
    (row,) = [ResultRow.from_json(r) for r in json.loads(LEGACY.read_text())["results"]]
    text = rendered([row])
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert "5.0% worse" in text and "13.4% better" in text  # the student: worse than the MLP, better than its teacher
    assert change(7.44) == "7.4% better" and change(-5.0) == "5.0% worse" and change(0.01) == "the same"
    many = [row.model_copy(update={"horizon": h}) for h in (96, 192, 336, 720)]
    assert max(len(line) for line in rendered(many).splitlines()) <= 80


def test_a_demo_sized_run_prints_only_our_lines(prefect_harness, tmp_path):
    done = subprocess.run([sys.executable, "-m", "timedistill.flows.cli", "retrain", "smoke", "--set",
                           f"storage.root={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr[-2000:]
    for noise in ("WARNING", "core_worker", "Token authentication", "Traceback", "Warning:", "ERROR"):
        assert noise not in done.stderr, (noise, done.stderr[-2000:])
    assert "Ray dashboard: http://127.0.0.1:" in done.stderr and "Prefect flow run '" in done.stderr
    assert "start-up" in done.stderr and "s in all" in done.stderr
    assert "few epochs (teacher 1, student 1, MLP 1)" in done.stdout  # what one epoch each means
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
