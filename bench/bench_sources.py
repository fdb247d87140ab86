"""Pulling a series out of PostgreSQL: rows per second and peak memory of a full pull and of an
incremental one (data.watermark) into the stored series, beside the way without them: `psql
\\copy` of the table to a CSV file, then an ingest of that file.

    python -m bench.bench_sources [--rows 10000000] [--new-rows 100000] [--repeats 3] [--uri URI]

The table has a timestamp column (one row a minute) and --variables float8 columns. Without
--uri, the benchmark starts a PostgreSQL server of its own in a temporary folder (tests/postgres.py,
Debian's package) and stops it at the end; with --uri (its password in PGPASSWORD or ~/.pgpass),
it makes and drops its table `bench_sources` there. The table is filled with all but --new-rows
rows and pulled once with data.watermark (the version an incremental pull appends to), then the
new rows are inserted. Each repeat then measures, each in a new process (`resource` peak RSS of
that process alone, through os.wait4):

- full: `ingest` of the whole table into an empty storage root (rows per second: the table's rows);
- incremental: `ingest` with data.watermark onto a copy of that first version (rows per second: the
  rows pulled, the overlap and the new ones; its time also covers reading, hashing and writing the
  stored series, which a grown series costs on every run);
- psql + file: `psql -c "\\copy (SELECT ... ORDER BY ts) TO file CSV HEADER"`, then `ingest` of the
  CSV file (wall times added, the larger peak of the two). The export is sorted: a file's rows are
  read in their order, and a table's come in whatever order a scan finds them (PostgreSQL's
  synchronized scans start one where another is), which the pulls sort themselves.

Each wall time includes the new process's start and imports (a few seconds, alike for every way).
Medians over --repeats. Artifacts go to bench/.artifacts/sources and are rebuilt on every run.
The section is written to --output (BENCHMARKS.md by default).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import NamedTuple

from bench.report import BENCHMARKS_MD, markdown_table, write_section

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "sources": """\
A full pull beats psql's export plus a file ingest on time and on memory: Arrow batches staged as Parquet, against
a CSV the file ingest holds whole. An incremental pull moves only the new rows and the overlap; its wall time also
covers the new process's start and reading, checking and writing the stored series, which grows with the series.""",
}

PROJECT = Path(__file__).resolve().parent.parent
ROOT = PROJECT / "bench" / ".artifacts" / "sources"
TABLE = "bench_sources"
START = "2000-01-01"  # the first row's time; a row a minute after it
INGEST = """
import sys
from timedistill.conf import load_config
from timedistill.store.storage import Storage
from timedistill.tasks.ingest import ingest
config = load_config(None, sys.argv[1:])
dataset = ingest(config, Storage(config.storage.root))
print(dataset.rows, dataset.appended_rows, dataset.watermark.pulled_rows if dataset.watermark else dataset.rows)
"""


class Measured(NamedTuple):
    seconds: float
    peak_mb: float
    rows: int  # the rows the measured way moved


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB of that process alone, its stdout)."""
    out, err = ROOT / "stdout.txt", ROOT / "stderr.txt"
    began = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)  # reaps it, with its own resource usage
    seconds = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed ({process.returncode}):\n{err.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out.read_text()  # Linux: ru_maxrss in kilobytes


def ingest(overrides: list[str], env: dict[str, str]) -> tuple[float, float, list[int]]:
    seconds, peak, stdout = run_measured([sys.executable, "-c", INGEST, *overrides], env)
    return seconds, peak, [int(value) if value != "None" else 0 for value in stdout.split()]


def settings(path: str, root: Path, *extra: str) -> list[str]:
    return [f"data.path={path}", f"storage.root={root}", "data.name=bench", "data.timestamp=ts", "data.lookback=96",
            "data.horizons=[24]", *extra]


@contextmanager
def server(uri: str | None) -> Iterator[tuple[str, dict[str, str]]]:
    """(the database's URI without a password, the environment that gives libpq the password)."""
    if uri is not None:
        yield uri, dict(os.environ)
        return
    from tests.postgres import PASSWORD, running_postgres  # the tests' own server, in a temporary folder

    with running_postgres() as postgres:
        yield postgres.uri(None), {**os.environ, "PGPASSWORD": PASSWORD}


def psql(uri: str, env: dict[str, str], *commands: str) -> None:
    for command in commands:
        subprocess.run(["psql", uri, "-v", "ON_ERROR_STOP=1", "-q", "-c", command], env=env, check=True,
                       capture_output=True)


def fill(uri: str, env: dict[str, str], first: int, last: int, variables: int) -> None:
    """Rows [first, last) of the table, made by the server itself (generate_series)."""
    values = ", ".join(f"sin(i / {60.0 * (k + 1)}) + {k}" for k in range(variables))
    psql(uri, env, f"INSERT INTO {TABLE} SELECT TIMESTAMP '{START}' + i * INTERVAL '1 minute', {values} "
                   f"FROM generate_series({first}, {last - 1}) AS i")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the table at the measured pulls")
    parser.add_argument("--new-rows", type=int, default=100_000, help="rows an incremental pull appends")
    parser.add_argument("--variables", type=int, default=4, help="float8 columns besides the time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--uri", help="an existing database (postgresql://user@host:port/db); default: a server "
                                      "of the benchmark's own")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_MD, help="the file the section is written to")
    args = parser.parse_args(argv)
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    load = os.getloadavg()[0]
    columns = ", ".join(f"v{k} float8" for k in range(args.variables))
    results: dict[str, list[Measured]] = {"full": [], "incremental": [], "psql": []}
    with server(args.uri) as (uri, env):
        psql(uri, env, f"DROP TABLE IF EXISTS {TABLE}", f"CREATE TABLE {TABLE} (ts timestamp, {columns})")
        try:
            base = args.rows - args.new_rows
            fill(uri, env, 0, base, args.variables)
            pulled = settings(uri, ROOT / "base", f"data.query={TABLE}", "data.watermark=ts")
            ingest(pulled, env)  # the version an incremental pull appends to
            fill(uri, env, base, args.rows, args.variables)
            psql(uri, env, f"VACUUM ANALYZE {TABLE}")
            for repeat in range(args.repeats):
                root = ROOT / f"full-{repeat}"
                seconds, peak, _ = ingest(settings(uri, root, f"data.query={TABLE}"), env)
                results["full"].append(Measured(seconds, peak, args.rows))
                shutil.rmtree(root)

                root = ROOT / f"incremental-{repeat}"
                shutil.copytree(ROOT / "base", root)
                seconds, peak, (_, appended, rows) = ingest(
                    settings(uri, root, f"data.query={TABLE}", "data.watermark=ts"), env)
                assert appended == args.new_rows, f"appended {appended} rows, not {args.new_rows}"
                results["incremental"].append(Measured(seconds, peak, rows))
                shutil.rmtree(root)

                csv = ROOT / f"export-{repeat}.csv"
                export = f"\\copy (SELECT * FROM {TABLE} ORDER BY ts) TO '{csv}' CSV HEADER"
                copy_s, copy_peak, _ = run_measured(["psql", uri, "-v", "ON_ERROR_STOP=1", "-q", "-c", export], env)
                root = ROOT / f"psql-{repeat}"
                seconds, peak, _ = ingest(settings(str(csv), root), env)
                results["psql"].append(Measured(copy_s + seconds, max(copy_peak, peak), args.rows))
                csv.unlink()
                shutil.rmtree(root)
        finally:
            psql(uri, env, f"DROP TABLE IF EXISTS {TABLE}")

    labels = {"full": "full pull (ADBC, staged Parquet)", "incremental": "incremental pull (data.watermark)",
              "psql": "psql \\copy to CSV + file ingest"}
    rows = []
    for method, measured in results.items():
        seconds = statistics.median(m.seconds for m in measured)
        moved = measured[0].rows
        rows.append([labels[method], f"{moved:,}", f"{seconds:.1f}", f"{moved / seconds:,.0f}",
                     f"{statistics.median(m.peak_mb for m in measured):,.0f}"])
    command = (f"python -m bench.bench_sources --rows {args.rows} --new-rows {args.new_rows} --variables "
               f"{args.variables} --repeats {args.repeats}")
    write_section("sources", "\n".join([
        "## Sources: a PostgreSQL table pulled into the stored series",
        "",
        f"Command: `{command}` ({date.today()}, {platform.machine()}, {os.cpu_count()} cores, load {load:.1f} at "
        f"the start). A table of {args.rows:,} rows (a timestamp and {args.variables} float8 columns), each way "
        "in a new process; medians of the repeats. Rows per second: the rows each way moved (an incremental "
        f"pull: the {args.new_rows:,} new rows and the overlap); peak memory: the process's peak RSS (psql + "
        "file: the larger of the two).",
        "",
        markdown_table(["way", "rows", "wall s", "rows/s", "peak MB"], rows),
    ]), READING["sources"], args.output)


if __name__ == "__main__":
    sys.exit(main())
