"""BENCHMARKS.md, generated: a header and one section per benchmark, in the order of SECTIONS.

Each benchmark owns the text between `<!-- begin:NAME -->` and `<!-- end:NAME -->`: its title, the
command that made it, its tables, then its reading (at most three lines, kept in the module that
writes the section as `READING[NAME]`). Running a benchmark replaces its own section and lays the
whole file out again; the other sections stay as they were measured. Nothing is typed by hand.

    python -m bench.report    # lay the file out again and refresh every reading, rerunning nothing
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
READING_MARK = "<!-- reading -->"
READING_LEAD = "**Reading.** "
MAX_READING_LINES = 3
MAX_READING_WIDTH = 120


@dataclass(frozen=True)
class Section:
    name: str  # the marker: <!-- begin:NAME -->
    module: str  # the module that writes it, whose READING[name] is the section's reading


SECTIONS = (
    Section("accuracy", "bench.tables"),
    Section("ablations", "bench.tables"),
    Section("intervals", "bench.tables"),
    Section("short-run", "bench.bench_training"),
    Section("demo", "bench.bench_demo"),
    Section("overhead", "bench.bench_overhead"),
    Section("startup", "bench.startup"),
    Section("commands", "bench.bench_commands"),
    Section("cpu-share", "bench.cpu_share"),
    Section("training", "bench.bench_training"),
    Section("scale", "bench.bench_scale"),
    Section("recurring", "bench.bench_recurring"),
    Section("sources", "bench.bench_sources"),
    Section("windows", "bench.bench_windows"),
    Section("models", "bench.bench_models"),
    Section("depthwise", "bench.bench_depthwise"),
    Section("serving", "bench.bench_serving"),
    Section("serving-candidates", "bench.bench_serving"),
    Section("export", "bench.bench_export"),
)
NAMES = tuple(section.name for section in SECTIONS)

HEADER = """# Benchmarks

Generated; do not edit by hand. Each section below was written by the benchmark named in it, whose
command (under the section's title) measures again and replaces that section alone.
`python -m bench.report` lays the file out again and refreshes every reading without rerunning anything.
docs/development.md lists the benchmarks; docs/notes/benchmark-notes.md keeps dated notes on them."""

BLOCK = re.compile(r"<!-- begin:(?P<name>[\w-]+) -->\n(?P<body>.*?)\n?<!-- end:(?P=name) -->", re.DOTALL)


@dataclass(frozen=True)
class Measured:
    """One section as a benchmark wrote it: its measured markdown and its reading."""

    markdown: str
    reading: str

    def block(self, name: str) -> str:
        return (f"<!-- begin:{name} -->\n{self.markdown.strip()}\n\n{READING_MARK}\n{READING_LEAD}"
                f"{self.reading.strip()}\n<!-- end:{name} -->")


def check_reading(name: str, reading: str) -> None:
    lines = reading.strip().splitlines()
    if not lines or len(lines) > MAX_READING_LINES:
        raise ValueError(f"section {name}: its reading has {len(lines)} lines (1 to {MAX_READING_LINES})")
    if too_wide := [line for line in lines if len(line) > MAX_READING_WIDTH]:
        raise ValueError(f"section {name}: a reading line is over {MAX_READING_WIDTH} characters: {too_wide[0]!r}")


def sections(text: str) -> dict[str, Measured]:
    """The sections of a BENCHMARKS.md text; whatever lies outside them is the layout's, not kept."""
    found = {}
    for match in BLOCK.finditer(text):
        markdown, _, reading = match["body"].partition(READING_MARK)
        found[match["name"]] = Measured(markdown.strip(), reading.strip().removeprefix(READING_LEAD.strip()).strip())
    return found


def render(measured: dict[str, Measured]) -> str:
    if unknown := sorted(set(measured) - set(NAMES)):
        raise ValueError(f"unknown sections {', '.join(unknown)}: add them to bench.report.SECTIONS")
    blocks = [measured[name].block(name) for name in NAMES if name in measured]
    return "\n\n".join([HEADER, *blocks]) + "\n"


def write(text: str, path: Path) -> None:
    """All at once: a temporary file renamed over the old one."""
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_section(name: str, markdown: str, reading: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace one benchmark's section (title, command, tables, reading) and lay the file out again."""
    if name not in NAMES:
        raise ValueError(f"unknown section {name}: add it to bench.report.SECTIONS")
    check_reading(name, reading)
    measured = sections(path.read_text()) if path.exists() else {}
    measured[name] = Measured(markdown.strip(), reading.strip())
    write(render(measured), path)


def reading_of(section: Section) -> str:
    return importlib.import_module(section.module).READING[section.name]


def refresh(path: Path = BENCHMARKS_MD) -> None:
    """Every section's reading from its module, the layout from this file; the measurements kept."""
    measured = sections(path.read_text())
    for section in SECTIONS:
        if section.name in measured:
            reading = reading_of(section)
            check_reading(section.name, reading)
            measured[section.name] = Measured(measured[section.name].markdown, reading)
    write(render(measured), path)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        refresh()
    except (ValueError, OSError) as error:
        sys.exit(f"bench.report: {error}")
