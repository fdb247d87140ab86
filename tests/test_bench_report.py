"""BENCHMARKS.md is generated only: a benchmark replaces its own section and the file is laid out
again from the sections, in one order, under one header; the shipped file is exactly that, with
every reading as its module holds it."""

from __future__ import annotations

import re

import pytest

from bench import report
from tests.conftest import ROOT


def section(name: str, table: str) -> str:
    return f"<!-- begin:{name} -->\n## {name}\n\nCommand: `python -m bench.{name}`\n\n{table}\n<!-- end:{name} -->"


def test_a_benchmark_replaces_its_own_section_and_the_rest_is_laid_out_again(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Old title\n\n" + section("windows", "| a |\n|---|\n| 1 |") + "\n\nA note typed by hand.\n\n"
                    + section("accuracy", "| b |\n|---|\n| 2 |") + "\n")
    report.write_section("models", "## Models\n\n| c |\n|---|\n| 3 |", "One line of reading.", path)
    text = path.read_text()
    assert text.startswith(report.HEADER) and "typed by hand" not in text and "Old title" not in text
    positions = [text.index(f"<!-- begin:{name} -->") for name in ("accuracy", "windows", "models")]
    assert positions == sorted(positions)  # the order of SECTIONS, not the order they were written in
    found = report.sections(text)
    assert found["windows"].markdown.endswith("| 1 |") and found["models"].reading == "One line of reading."
    report.write_section("windows", "## Windows\n\n| a |\n|---|\n| 9 |", "Measured again.", path)
    again = report.sections(path.read_text())
    assert again["windows"].markdown.endswith("| 9 |") and again["models"] == found["models"]
    assert report.render(again) == path.read_text()


@pytest.mark.parametrize(("name", "reading", "message"), [
    ("windows", "one\ntwo\nthree\nfour", "4 lines"),
    ("windows", "", "0 lines"),
    ("windows", "x" * 121, "over 120 characters"),
    ("a-new-bench", "fine", "unknown section a-new-bench"),
])
def test_a_reading_too_long_or_an_unknown_section_is_refused_and_nothing_written(tmp_path, name, reading, message):
    path = tmp_path / "BENCHMARKS.md"
    with pytest.raises(ValueError, match=message):
        report.write_section(name, "## A table", reading, path)
    assert not path.exists()


def test_benchmarks_md_is_the_sections_of_the_benchmarks_and_nothing_else():
    text = (ROOT / "BENCHMARKS.md").read_text()
    found = report.sections(text)
    assert set(found) == set(report.NAMES)
    assert report.render(found) == text  # nothing outside the sections, the header and the order
    for entry in report.SECTIONS:
        report.check_reading(entry.name, report.reading_of(entry))  # refused now, not after a benchmark's hours
        assert found[entry.name].reading == report.reading_of(entry).strip(), entry


def test_every_section_a_benchmark_writes_is_registered():
    written = {match for path in (ROOT / "bench").glob("*.py")
               for match in re.findall(r'write_section\(\s*"([\w-]+)"', path.read_text())}
    assert written == set(report.NAMES)
