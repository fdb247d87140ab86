"""The `timedistill` command line.

Every command takes a config (a YAML path, or the name of a config shipped in conf/, e.g.
`smoke`), repeatable `--set dotted.key=value` overrides, and `--json`, which makes the last line
of stdout one JSON object for scripts. Errors are one line on stderr; `--debug` shows tracebacks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from conf import Config, ConfigError, load_config, storage_root
from tasks.errors import DataError, StepError
from tasks.storage import Storage

app = typer.Typer(
    help="TimeDistill: distill big forecasters into a small MLP, on Ray and Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

ConfigArg = Annotated[str, typer.Argument(help="config YAML path, or a shipped name: smoke, etth1, ...")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override: dotted.key=value (YAML value)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object as the last stdout line")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]

USER_ERRORS = (ConfigError, DataError, StepError)


@app.callback()
def main_callback() -> None:
    """TimeDistill: distill big forecasters into a small MLP, on Ray and Prefect."""


def run_command(debug: bool, body: Callable[[], Any]) -> Any:
    """Run a command body; user errors become one line on stderr and exit code 1."""
    try:
        return body()
    except USER_ERRORS as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def open_storage(config: Config) -> Storage:
    return Storage(storage_root(config), config.storage.endpoint_override)


@app.command()
def ingest(config: ConfigArg, set_: SetOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Validate a CSV/Parquet series and store it as Arrow/Parquet with its splits and scaler."""
    from tasks.ingest import ingest as ingest_step

    def body() -> None:
        cfg = load_config(config, set_ or [])
        storage = open_storage(cfg)
        dataset = ingest_step(cfg, storage)
        summary = dataset.summary(cfg.data.lookback, cfg.data.horizons, storage)
        if as_json:
            emit_json(summary)
        else:
            print_ingest(summary)

    run_command(debug, body)


def print_ingest(summary: dict[str, Any]) -> None:
    state = "reused (already ingested)" if summary["cached"] else "ingested"
    out.print(f"[bold]{summary['dataset']}[/] {state}: {summary['rows']} rows x "
              f"{len(summary['variables'])} variables, step {summary['step']}")
    out.print(f"  {summary['path']}")
    table = Table("split", "rows", *[f"windows h={h}" for h in next(iter(summary["splits"].values()))["windows"]])
    for split, info in summary["splits"].items():
        start, end = info["rows"]
        table.add_row(split, f"[{start}, {end})", *[str(n) for n in info["windows"].values()])
    out.print(table)
    missing = summary["missing"]
    if missing["gaps"] or missing["values_filled"] or missing["duplicates_dropped"]:
        out.print(f"  filled ({missing['policy']}): {missing['gaps']} gaps ({missing['rows_inserted']} rows "
                  f"inserted), {missing['values_filled']} values; {missing['duplicates_dropped']} "
                  f"repeated rows dropped")


def main() -> None:  # pragma: no cover - the console script calls app directly
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
