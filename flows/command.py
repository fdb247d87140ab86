"""What every command shares: its options, how it runs (one line for a user's error, a clean stop
on Ctrl-C or SIGTERM, nothing left behind) and where it finds storage."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from timedistill.conf import Config, ConfigError, load_config, storage_root
from timedistill.flows.prefect_server import stop_prefect_server
from timedistill.flows.render import err
from timedistill.store.errors import InputError, RegistryError
from timedistill.store.record import StaleRecord
from timedistill.store.storage import Storage
from timedistill.tasks import lifetime
from timedistill.tasks.errors import INTERRUPTED_BETWEEN_STEPS, DataError, Interrupted, StepError

ConfigArg = Annotated[str, typer.Argument(help="config YAML path, or a shipped name: smoke, etth1, ...")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a config field: "
                                                  "dotted.key=value (a YAML value); repeatable")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="print one JSON object as the last stdout line")]
DebugOpt = Annotated[bool, typer.Option("--debug", metavar="", help="show tracebacks and Ray's and Prefect's logs")]
DataOpt = Annotated[str | None, typer.Option("--data", metavar="FILE", help="your own CSV or Parquet file (a path "
                                             "or URI) instead of the config's: the dataset is named after it, and its "
                                             "time column, layout and variables are read off it")]
RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (default: "
                                                  "ray.address, $RAY_ADDRESS, else a local Ray)")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="storage root (default: the config's "
                                                "storage.root, ./artifacts)")]
ModelArg = Annotated[str, typer.Argument(help="a registered model, e.g. etth1-96")]
VersionOpt = Annotated[str | None, typer.Option(help="default: LATEST")]
RootConfigOpt = Annotated[str | None, typer.Option("--config", help="config whose storage root to read")]
FlagOpt = {"metavar": ""}  # a flag takes no value: no <bool> in the help

USER_ERRORS = (ConfigError, DataError, StepError, RegistryError, InputError, StaleRecord)


def run_command(debug: bool, body: Callable[[], Any]) -> Any:
    """Run a command body; user errors become one line on stderr and exit code 1.

    Ctrl-C and SIGTERM, to the command or to its whole process group, stop it within seconds
    with one line (`Interrupted.describe`): every step's atomic writes leave nothing half written,
    and nothing the command started outlives it (tasks/lifetime.py: Prefect's temporary server,
    Ray's processes, HAProxy; after a SIGKILL too)."""
    if lifetime.is_the_command_line():
        lifetime.tie_to_this_process()
        lifetime.on_stop(130, INTERRUPTED_BETWEEN_STEPS)
    lifetime.stop_on_signals()
    try:
        return body()
    except USER_ERRORS as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:
        line = exc.describe() if isinstance(exc, Interrupted) else INTERRUPTED_BETWEEN_STEPS
        if lifetime.current() is None:  # called in-process (a test, a notebook): its process stays
            stop_prefect_server()
            err.print(escape(line), highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        lifetime.last_words(line)  # what a stop cut short prints
        if not debug:
            lifetime.hush()
        stop_prefect_server()
        lifetime.end_started_processes()
        lifetime.say(line)
        lifetime.exit_now(130)


def open_storage(config: Config) -> Storage:
    return Storage(storage_root(config), config.storage.endpoint_override)


def quiet_prefect(debug: bool) -> None:
    """The flow's logs still reach Prefect's API; the terminal shows our progress alone."""
    if not debug:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def registry_storage(config: str | None, overrides: list[str] | None, root: str | None) -> Storage:
    cfg = load_config(config, [*(overrides or []), *([f"storage.root={root}"] if root else [])])
    return open_storage(cfg)
