"""The `timedistill` command line.

Every command takes a config (a YAML path, or the name of a config shipped in conf/, e.g.
`smoke`), repeatable `--set dotted.key=value` overrides, and `--json`, which makes the last line
of stdout one JSON object for scripts. Errors are one line on stderr; `--debug` shows tracebacks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from timedistill.conf import Config, ConfigError, load_config, storage_root
from timedistill.flows.progress import StepProgress
from timedistill.store.errors import InputError, RegistryError
from timedistill.store.records import RUN_CONFIG
from timedistill.store.storage import Storage
from timedistill.tasks import lifetime
from timedistill.tasks.errors import INTERRUPTED_BETWEEN_STEPS, DataError, Interrupted, StepError

if TYPE_CHECKING:  # torch and Ray load only when a command runs: `--help` stays fast
    from prefect.server.api.server import SubprocessASGIServer

    from timedistill.serving.ingress import LocalIngress
    from timedistill.store.records import Dataset, ResultRow, RunSummary, Teacher

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstrings reflow instead of breaking where the source does
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True)

ConfigArg = Annotated[str, typer.Argument(help="config YAML path, or a shipped name: smoke, etth1, ...")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a config field: "
                                                  "dotted.key=value (a YAML value); repeatable")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="print one JSON object as the last stdout line")]
DebugOpt = Annotated[bool, typer.Option("--debug", metavar="", help="show tracebacks and Ray's and Prefect's logs")]

DataOpt = Annotated[str | None, typer.Option("--data", metavar="FILE", help="your own CSV or Parquet file (a path "
                                             "or URI) instead of the config's: the dataset is named after it, and its "
                                             "time column, layout and variables are read off it")]
USER_ERRORS = (ConfigError, DataError, StepError, RegistryError, InputError)
DRIFT_EXIT = 3  # `monitor`: a model drifted (0: none did; 1: an error)


def config_overrides(config: str, data: str | None, sets: list[str] | None) -> list[str]:
    """The command's `--set` overrides, after those of `--data FILE` (so that a `--set` still
    wins): the file, named after itself, its columns read off it (conf/schema.py,
    data_file_overrides)."""
    from pathlib import Path

    from timedistill.conf.loading import data_file_overrides

    if data is None:
        return list(sets or [])
    path = data if "://" in data else str(Path(data).expanduser().resolve())
    return [*data_file_overrides(path, load_config(config, sets or []).data), *(sets or [])]


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"timedistill {version('timedistill')}")
        raise typer.Exit()


VersionOpt = Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True, metavar="",
                                          help="print the version and exit")]
FlagOpt = {"metavar": ""}  # a flag takes no value: no <bool> in the help


@app.callback(epilog="Examples: `timedistill retrain smoke` (a minute on a laptop), `timedistill retrain etth1 "
                     "--set data.horizons=[96]`, `timedistill serve smoke`, `timedistill predict smoke --model "
                     "smoke-24 --input data/ETTh1.csv`. Every command: `timedistill COMMAND -h`.")
def main_callback(version: VersionOpt = False) -> None:
    """TimeDistill: distill big forecasters into a small MLP student, on Ray and Prefect.
    Configs are YAML files or shipped names (smoke, etth1, ettm1, weather, exchange, illness)."""


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
        exit_now(130)


def stop_prefect_server() -> None:
    """Stop the temporary Prefect server this process started, if any (it would outlive us).

    Only its process ends: the instance stays registered as running, so a Prefect thread that
    still calls the API after the interrupt (the runner of `schedule`) fails on the stopped
    address instead of starting a new server that nothing would stop. At exit Prefect's own
    handler reaps the process. Each wait is short: after a signal to the whole process group the
    server has already stopped, and nothing answers."""
    if "prefect.server.api.server" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    with suppress(Exception):
        # what the run logged and emitted goes out first: sent after the server has stopped, it
        # would be retried against nothing for a minute before the process could exit
        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=PREFECT_STOP_WAIT_S)
    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        if (process := getattr(server, "server_process", None)) is None:
            continue
        process.terminate()
        try:
            process.wait(timeout=PREFECT_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()


PREFECT_STOP_WAIT_S = 1.5


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def open_storage(config: Config) -> Storage:
    return Storage(storage_root(config), config.storage.endpoint_override)


@app.command()
def ingest(config: ConfigArg, set_: SetOpt = None, data: DataOpt = None, as_json: JsonOpt = False,
           debug: DebugOpt = False) -> None:
    """Validate a CSV/Parquet series and store it as Arrow/Parquet with its splits and scaler."""
    from timedistill.tasks.ingest import ingest as ingest_step
    from timedistill.tasks.ingest import ingest_summary

    def body() -> None:
        cfg = load_config(config, config_overrides(config, data, set_))
        storage = open_storage(cfg)
        dataset = ingest_step(cfg, storage)
        if as_json:
            emit_json(ingest_summary(dataset, cfg.data.lookback, cfg.data.horizons, storage))
        else:
            print_ingest(dataset, cfg, storage)

    run_command(debug, body)


def print_ingest(dataset: Dataset, cfg: Config, storage: Storage) -> None:
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


RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (default: "
                                                  "ray.address, $RAY_ADDRESS, else a local Ray)")]


def run_pipeline(config: str, overrides: list[str], ray_address: str | None, debug: bool,
                 **stop: Any) -> RunSummary:
    """The retrain flow's body without Prefect (the step commands need no Prefect server), up to
    its stopping point, with progress on the terminal."""
    load_config(config, overrides)  # fail fast on a bad config
    from timedistill.flows.retrain import progress, retrain

    with StepProgress() as terminal, progress(terminal, quiet=not debug):
        return retrain.fn(config=config, overrides=overrides, ray_address=ray_address, **stop)


@app.command()
def teacher(config: ConfigArg, set_: SetOpt = None, data: DataOpt = None, as_json: JsonOpt = False,
            debug: DebugOpt = False, ray_address: RayAddressOpt = None) -> None:
    """Train the teacher of every configured horizon on Ray Train (reused when already trained)."""

    def body() -> None:
        summary = run_pipeline(config, config_overrides(config, data, set_), ray_address, debug, stop_after="teacher")
        if as_json:
            choices = [choice.to_json() for choice in summary.teacher_choices]  # teacher.name auto
            sets = [ensemble.to_json() for ensemble in summary.teacher_sets]  # teacher.names
            emit_json({"results": [teacher_record(summary, t) for t in summary.teachers]}
                      | ({"teacher_choices": choices} if choices else {}) | ({"teacher_sets": sets} if sets else {}))
            return
        table = Table("dataset", "horizon", "teacher", "params", "epochs", "val MSE", "test MSE", "test MAE")
        for t in summary.teachers:
            table.add_row(t.dataset, str(t.horizon), t.name, f"{t.params:,}", str(t.epochs), f"{t.val_mse:.4f}",
                          f"{t.test_mse:.4f}", f"{t.test_mae:.4f}")
        out.print(table)

    run_command(debug, body)


def teacher_record(summary: RunSummary, teacher: Teacher) -> dict[str, Any]:
    """A line of `teacher --json`."""
    return {"dataset": teacher.dataset, "horizon": teacher.horizon, "teacher": teacher.name,
            "checkpoint": summary.uri(teacher.weights_path), "val_mse": teacher.val_mse,
            "test_mse": teacher.test_mse, "test_mae": teacher.test_mae, "epochs": teacher.epochs,
            "params": teacher.params, "cached": teacher.cached}


@app.command()
def distill(config: ConfigArg, set_: SetOpt = None, data: DataOpt = None, as_json: JsonOpt = False,
            debug: DebugOpt = False, ray_address: RayAddressOpt = None) -> None:
    """Distill the student from the trained teacher (via its Parquet cache), train the plain-MLP
    baseline beside it, and compare all three on the test split."""

    def body() -> None:
        summary = run_pipeline(config, config_overrides(config, data, set_), ray_address, debug,
                               stop_after="evaluate", train_teachers=False)
        use = summary.cache_use()
        if as_json:
            emit_json({"results": [row.to_json() for row in summary.results], "cache": use.to_json(),
                       "run_dir": summary.run_dir, "config": f"{summary.run_dir}/{RUN_CONFIG}"})
            return
        print_results(summary.results)
        if summary.caches:
            out.print(use.describe())
        out.print(f"config: {summary.run_dir}/{RUN_CONFIG}")

    run_command(debug, body)


@app.command()
def retrain(config: ConfigArg, set_: SetOpt = None, data: DataOpt = None, as_json: JsonOpt = False,
            debug: DebugOpt = False, ray_address: RayAddressOpt = None) -> None:
    """Run the whole pipeline as a Prefect flow: ingest, teacher, cache, distill + baseline,
    evaluate, register. Steps whose inputs did not change are skipped. `--data FILE` runs any
    config on a file of your own (`timedistill retrain smoke --data my.csv` for a quick look)."""

    def body() -> None:
        began = time.perf_counter()
        if not debug:  # the flow's logs still reach Prefect's API; the terminal shows progress
            os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        overrides = config_overrides(config, data, set_)
        load_config(config, overrides)  # fail fast on a bad config, before any server starts
        with prefect_server_warming():
            from timedistill.flows.retrain import progress
            from timedistill.flows.retrain import retrain as retrain_flow
        with StepProgress() as terminal, progress(terminal, quiet=not debug):
            summary = retrain_flow(config=config, overrides=overrides, ray_address=ray_address)
            total, steps = time.perf_counter() - began, sum(step.seconds for step in summary.steps.values())
            terminal.step("start-up", total - steps, False, "imports, Prefect's server (outside the steps)")
            terminal.note(f"{total:.1f}s in all")
        if as_json:
            emit_json(summary.to_json() | {"config_file": f"{summary.run_dir}/{RUN_CONFIG}"})
        else:
            print_results(summary.results)
            for model in summary.models:
                out.print(model.describe())
            out.print(f"reports: {summary.run_dir}/report.md (with forecast.png, training.png), metrics.json")
            out.print(f"config: {summary.run_dir}/{RUN_CONFIG}")

    run_command(debug, body)


def temporary_prefect_server() -> SubprocessASGIServer | None:
    """The temporary Prefect server every client of this process will use, or None where
    PREFECT_API_URL names a server (or the temporary one is not allowed)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer()


@contextmanager
def prefect_server_warming() -> Iterator[None]:
    """Without PREFECT_API_URL the first flow run starts Prefect's temporary server and waits
    for it (seconds of CPU on a small machine). Start it in a thread while the body imports
    torch, Ray and the flow, and wait for it on the way out. A failed start here is left to the
    flow run, which starts the server itself and reports the error."""
    if (server := temporary_prefect_server()) is None:
        yield
        return

    def start() -> None:
        with suppress(Exception):  # the flow run starts it again and reports why
            server.start()

    starter = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    starter.start()
    try:
        yield
    finally:
        starter.join()


def start_prefect_server() -> None:
    """Start Prefect's temporary server (where one is used) here, in the main thread. Left to
    `prefect.serve`, its runner thread starts it, and an interrupt that comes first finds
    nothing to stop while the thread goes on to start a server that outlives us."""
    if (server := temporary_prefect_server()) is not None:
        server.start()


@app.command()
def schedule(config: ConfigArg, cron: Annotated[str, typer.Option(help="cron schedule, e.g. '0 3 * * *'")],
             set_: SetOpt = None, data: DataOpt = None,
             name: Annotated[str | None, typer.Option(help="deployment name")] = None,
             monitor: Annotated[bool, typer.Option("--monitor", **FlagOpt, help="schedule the drift monitor instead "
                                                   "of the retrain flow")] = False,
             trigger: Annotated[bool, typer.Option(**FlagOpt, help="with --monitor: a drift starts the retrain "
                                                   "flow")] = True,
             ray_address: RayAddressOpt = None, debug: DebugOpt = False) -> None:
    """Serve the retrain flow (or with --monitor the drift monitor) on a cron schedule (Prefect
    `flow.serve`); runs until Ctrl-C."""

    def body() -> None:
        overrides = config_overrides(config, data, set_)
        cfg = load_config(config, overrides)
        if monitor:
            from timedistill.flows.monitor import monitor_deployment

            runnable = monitor_deployment(config, cron, overrides=overrides, name=name, trigger=trigger,
                                          ray_address=ray_address)
        else:
            from timedistill.flows.retrain import deployment

            runnable = deployment(config, cron, overrides=overrides, name=name, ray_address=ray_address)
        what = "drift monitor" if monitor else "retrain flow"
        start_prefect_server()
        err.print(f"serving the {what} of {cfg.data.name} on '{cron}' as deployment '{runnable.name}'; "
                  "Ctrl-C stops it")
        from prefect import serve

        # Prefect's runner takes Ctrl-C and SIGTERM itself: it pauses the deployment and returns,
        # or exits at once (SystemExit 0) when the signal comes before it has started. Either way
        # the stop reads as every command's interrupt.
        with suppress(SystemExit):
            serve(runnable)
        raise KeyboardInterrupt

    run_command(debug, body)


@app.command("monitor")
def monitor_command(config: ConfigArg, set_: SetOpt = None, data: DataOpt = None,
                    trigger: Annotated[bool, typer.Option("--trigger", **FlagOpt, help="a drift starts the retrain "
                                                          "flow (its Prefect deployment if there is one)")] = False,
                    as_json: Annotated[bool, typer.Option("--json", help="a JSON object per model on stdout")] = False,
                    ray_address: RayAddressOpt = None, debug: DebugOpt = False) -> None:
    """Ingest the newest data and check every registered model of the config for drift: its MSE
    on the windows with new truth against its MSE at registration. Exits 3 when a model drifted
    (0 when none did, 1 on an error), so that cron and CI can act on it."""

    def body() -> list[Any]:
        if not debug:
            os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        overrides = config_overrides(config, data, set_)
        load_config(config, overrides)
        with prefect_server_warming():
            from timedistill.flows.monitor import monitor
            from timedistill.flows.retrain import progress
        with StepProgress() as terminal, progress(terminal, quiet=not debug):
            reports = monitor(config=config, overrides=overrides, trigger=trigger, ray_address=ray_address)
        if as_json:
            for report in reports:
                emit_json(report.to_json())
            return reports
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
        return reports

    if any(report.drift for report in run_command(debug, body)):
        raise typer.Exit(DRIFT_EXIT)


@app.command()
def predict(config: ConfigArg, model: Annotated[str, typer.Option("--model", help="a registered model, e.g. etth1-96")],
            input_: Annotated[str, typer.Option("--input", "--data", help="the series: CSV or Parquet, a path or a "
                                                "URI, wide or long; its columns are matched to the model's "
                                                "variables by name, every row of it read")],
            version: Annotated[str | None, typer.Option(help="default: LATEST")] = None,
            output: Annotated[str | None, typer.Option(help="Parquet file to write (default: "
                                                       "predictions/<model>-<version>.parquet)")] = None,
            origins: Annotated[str, typer.Option(help="last, all, or FROM:TO (timestamps of the last history "
                                                 "row): several origins are a backtest")] = "last",
            layout: Annotated[str, typer.Option(help="wide (a column per variable) or long (a row per "
                                                "variable)")] = "wide",
            set_: SetOpt = None, as_json: JsonOpt = False, ray_address: RayAddressOpt = None,
            debug: DebugOpt = False) -> None:
    """Forecast offline from a file with a registered student: from its last window, or from every
    origin of a range with MSE and MAE where the truth is known; writes Parquet."""
    from pathlib import Path

    def body() -> None:
        if layout not in ("wide", "long"):
            raise ConfigError(f"--layout {layout!r}: expected wide or long")
        cfg = load_config(config, set_ or [])
        from timedistill.store.storage import make_filesystem
        from timedistill.tasks.predict import predict as predict_step
        from timedistill.tasks.runtime import ray_session

        target = output or f"predictions/{model}-{version or 'latest'}.parquet"
        folder, name = (target.rsplit("/", 1) if "/" in target else (".", target))
        if "://" not in target:
            folder = str(Path(folder).expanduser().resolve())
        make_filesystem(folder, cfg.storage.endpoint_override)  # a bad URI fails before any work
        several = origins != "last"  # one forecast needs no cluster
        with ray_session(cfg, ray_address, quiet=not debug) if several else nullcontext():
            summary = predict_step(cfg, open_storage(cfg), model, version, input_,
                                   Storage(folder, cfg.storage.endpoint_override), name, origins, layout)
        if as_json:
            emit_json(summary.to_json())
        else:
            out.print(summary.describe())

    run_command(debug, body)


models_app = typer.Typer(help="The model registry: list, show, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")
StorageOpt = Annotated[str | None, typer.Option("--storage", help="storage root (default: the config's "
                                                "storage.root, ./artifacts)")]
ModelArg = Annotated[str, typer.Argument(help="a registered model, e.g. etth1-96")]


def registry_storage(config: str | None, overrides: list[str] | None, root: str | None) -> Storage:
    cfg = load_config(config, [*(overrides or []), *([f"storage.root={root}"] if root else [])])
    return open_storage(cfg)


@models_app.command("list")
def models_list(config: Annotated[str | None, typer.Argument(help="config whose storage root to read")] = None,
                set_: SetOpt = None, storage: StorageOpt = None, as_json: JsonOpt = False,
                debug: DebugOpt = False) -> None:
    """Every registered model: its LATEST version, window, variables and scores."""
    from timedistill.store.registry import list_models, read_version, versions

    def body() -> None:
        store = registry_storage(config, set_, storage)
        entries = [read_version(store, name) for name in list_models(store)]
        if as_json:
            emit_json({"models": [model_record(store, entry, versions(store, entry.model)) for entry in entries]})
            return
        table = Table("model", "latest", "versions", "lookback", "horizon", "variables", "student MSE")
        for entry in entries:
            table.add_row(entry.model, entry.version, str(len(versions(store, entry.model))),
                          str(entry.config.lookback), str(entry.config.horizon), str(len(entry.config.variables)),
                          f"{entry.metrics.student.test_mse:.4f}")
        out.print(table)
        if not entries:
            err.print(f"no registered models under {store.uri('registry')}")

    run_command(debug, body)


@models_app.command("show")
def models_show(name: ModelArg, version: Annotated[str | None, typer.Option(help="default: LATEST")] = None,
                config: Annotated[str | None, typer.Option(help="config whose storage root to read")] = None,
                set_: SetOpt = None, storage: StorageOpt = None, as_json: JsonOpt = False,
                debug: DebugOpt = False) -> None:
    """One registered version: what it forecasts, from what, and how it scored."""
    from timedistill.store.registry import read_version, versions

    def body() -> None:
        store = registry_storage(config, set_, storage)
        entry = read_version(store, name, version)
        record = model_record(store, entry, versions(store, name))
        if as_json:
            emit_json(record)
            return
        held = entry.config
        out.print(f"[bold]{entry.model_id}[/] (LATEST of {record['versions']}): {held.student} student of a "
                  f"{held.teacher} teacher, {held.dataset} data {held.data_fingerprint}, run {held.run_id}")
        out.print(f"  lookback {held.lookback}, horizon {held.horizon}, step {held.step}, variables "
                  f"{', '.join(held.variables)}; registered {held.created}")
        print_results([entry.metrics])

    run_command(debug, body)


def model_record(store: Storage, entry: Any, versions: list[str]) -> dict[str, Any]:
    """A line of `models list --json`, and `models show --json`."""
    held = entry.config
    return {"name": entry.model, "version": entry.version, "versions": versions, "lookback": held.lookback,
            "horizon": held.horizon, "step": held.step, "variables": held.variables, "student": held.student,
            "teacher": held.teacher, "dataset": held.dataset, "data_fingerprint": held.data_fingerprint,
            "run_id": held.run_id, "created": held.created, "path": store.uri(entry.folder),
            "metrics": {role: score.to_json() for role, score in entry.metrics.headline().items()}}


@models_app.command("rollback")
def models_rollback(name: ModelArg, to: Annotated[str, typer.Option("--to", help="the version to serve, e.g. v2")],
                    force: Annotated[bool, typer.Option("--force", help="point LATEST at it even when it does not "
                                                        "load and answer a probe", **FlagOpt)] = False,
                    config: Annotated[str | None, typer.Option(help="config whose storage root to use")] = None,
                    set_: SetOpt = None, storage: StorageOpt = None, as_json: JsonOpt = False,
                    debug: DebugOpt = False) -> None:
    """Point a model's LATEST at an earlier version, once it loads and answers a probe as a server
    would check it; a running server switches within serve.reload_interval_s (or at once on POST
    /v1/reload)."""
    from timedistill.store.errors import BrokenVersion
    from timedistill.store.forecaster import load_verified
    from timedistill.tasks.registry import rollback

    def body() -> None:
        store = registry_storage(config, set_, storage)
        if force:
            try:
                load_verified(store, name, to)
            except BrokenVersion as exc:
                err.print(f"warning: {exc}; a server holds it out and serves the newest version before it that "
                          "loads", highlight=False, soft_wrap=True)
        before = rollback(store, name, to, force=force)
        if as_json:
            emit_json({"name": name, "version": to, "previous": before})
        else:
            out.print(f"{name}: LATEST is {to} (was {before})")

    run_command(debug, body)


@app.command("export")
def export_command(model: Annotated[str, typer.Argument(help="a registered model, e.g. etth1-96")],
                   fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript")],
                   output: Annotated[str, typer.Option(help="folder (or URI) to write the file and its card "
                                                       "to")] = "exports",
                   version: Annotated[str | None, typer.Option(help="default: LATEST")] = None,
                   config: Annotated[str | None, typer.Option(help="config whose storage root to read")] = None,
                   set_: SetOpt = None, storage: StorageOpt = None, as_json: JsonOpt = False,
                   debug: DebugOpt = False) -> None:
    """Write a registered student as one self-contained file (data units in and out: the scaler
    is folded in) with a JSON card beside it, one card per file (smoke-24-v1.onnx and
    smoke-24-v1.onnx.json)."""

    def body() -> None:
        if fmt not in ("onnx", "torchscript"):
            raise ConfigError(f"--format {fmt!r}: expected onnx or torchscript")
        from timedistill.tasks.export import export

        store = registry_storage(config, set_, storage)
        target = Storage(output, store.endpoint_override)
        try:
            card = export(store, model, version, fmt, target)
        except ModuleNotFoundError as exc:  # the export extra is optional
            raise StepError(f"--format onnx needs {exc.name}: pip install 'timedistill[export]'") from None
        if as_json:
            emit_json(card.to_json() | {"path": target.uri(card.file), "card": target.uri(card.card_file)})
        else:
            out.print(f"{card.describe()}\n  {target.uri(card.file)}, card {target.uri(card.card_file)}")

    run_command(debug, body)


@app.command("serve")
def serve_command(config: Annotated[str | None, typer.Argument(help="config (default: built-in defaults)")] = None,
                  set_: SetOpt = None, ray_address: RayAddressOpt = None, debug: DebugOpt = False) -> None:
    """Serve the registered students over HTTP with Ray Serve until Ctrl-C or SIGTERM."""

    def body() -> None:
        import shutil
        import threading

        cfg = load_config(config, set_ or [])
        storage = open_storage(cfg)
        ingress = use_ray_environment(cfg, ray_address)

        from timedistill.store.registry import list_models
        from timedistill.tasks.runtime import ray_session

        lifetime.on_stop(0, SHUTTING_DOWN)  # a stop is the end of serving, not an error
        try:
            with ray_session(cfg, ray_address, quiet=not debug):
                try:
                    start_serving(cfg)
                    names = list_models(storage)
                    err.print(f"serving {len(names)} model(s) from {storage.uri('registry')}: "
                              f"{', '.join(names) or '-'}")
                    extra = f"; {ingress.describe()}" if ingress else ""
                    out.print(f"listening on http://{cfg.serve.host}:{cfg.serve.port} (docs: /docs){extra}; "
                              "Ctrl-C stops", highlight=False, soft_wrap=True)
                    threading.Event().wait()  # until Ctrl-C or SIGTERM: KeyboardInterrupt
                except KeyboardInterrupt:
                    lifetime.say(SHUTTING_DOWN)
                    if not debug:
                        lifetime.hush()
                finally:
                    shut_down_serve()
        finally:
            if ingress is not None:
                shutil.rmtree(ingress.folder, ignore_errors=True)
        exit_now()

    run_command(debug, body)


SERVE_STOP_WAIT_S = 5.0  # requests in flight finish, then the replicas stop (about 2 s)
SHUTTING_DOWN = "shutting down Ray Serve"


def start_serving(cfg: Config) -> None:
    """Start Ray Serve's ingress and the application; an ingress that cannot start (a port in
    use) is a one-line StepError, not Ray's traceback of the actor that failed."""
    import ray
    from ray import serve

    from timedistill.serving.app import APP_NAME, build_app, http_options
    from timedistill.serving.ingress import resolved, start_failure

    try:
        serve.start(http_options=http_options(cfg.serve))
    except ray.exceptions.RayError as exc:
        what = {"haproxy": "HAProxy", "proxy": "Ray Serve's proxy"}[resolved(cfg.serve)]
        raise StepError(f"the HTTP ingress ({what}) did not start: {start_failure(exc)}; serve.port "
                        f"{cfg.serve.port}, serve.haproxy_stats_port and serve.haproxy_metrics_port choose "
                        "its ports") from None
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
    wait_until_answering(cfg)


INGRESS_ANSWERS_WITHIN_S = 60.0


def wait_until_answering(cfg: Config) -> None:
    """Return once /healthz answers 200 through the ingress at serve.host:serve.port, as a client
    reaches it (HAProxy takes a moment to learn the replicas Serve reports ready); a server that
    does not is a StepError, never a "listening on" line."""
    import httpx

    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::", "") else cfg.serve.host
    url = f"http://{host if ':' not in host else f'[{host}]'}:{cfg.serve.port}/healthz"
    deadline, answer = time.monotonic() + INGRESS_ANSWERS_WITHIN_S, "no answer"
    while time.monotonic() < deadline:
        try:
            status = httpx.get(url, timeout=5, trust_env=False).status_code  # straight, never through a proxy
        except httpx.HTTPError as exc:
            answer = type(exc).__name__
        else:
            if status == 200:
                return
            answer = f"HTTP {status}"
        time.sleep(0.5)
    raise StepError(f"the server started but {url} does not answer ({answer} after {INGRESS_ANSWERS_WITHIN_S:.0f} s)")


def shut_down_serve() -> None:
    """serve.shutdown(), given SERVE_STOP_WAIT_S: after a signal to the whole process group, Ray's
    GCS and raylet are gone and Serve's controller never answers (what is left is ended with the
    command, tasks/lifetime.py)."""
    import threading

    from ray import serve

    closing = threading.Thread(target=serve.shutdown, name="timedistill-serve-shutdown", daemon=True)
    closing.start()
    closing.join(SERVE_STOP_WAIT_S)


def exit_now(status: int = 0) -> None:
    """End what the command started and is still running, and exit without the interpreter's
    teardown, once Serve has drained and Ray has stopped (or did not in time): the destructors of
    Ray's core worker and its gRPC threads took about 3 s of each stop, longer than the drain
    itself (BENCHMARKS.md, "Serving defaults"), and wait forever on a Ray whose GCS is gone."""
    import logging

    lifetime.end_started_processes()
    lifetime.remove_folder()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def use_ray_environment(cfg: Config, address: str | None) -> LocalIngress | None:
    """Give a Ray that this command starts the environment `serve.ingress` needs (read by Ray
    Serve at import, so before the first `ray.serve` import). A running cluster keeps its own.
    Returns the local HAProxy's ports and folder, in HAProxy mode."""
    import ray

    from timedistill.serving.ingress import local_ray_environment, ray_environment
    from timedistill.tasks.runtime import ray_address

    wanted = ray_environment(cfg.serve)
    if not wanted:
        return None
    if ray.is_initialized() or ray_address(cfg, address):
        if cfg.serve.ingress == "auto":  # the cluster's own mode, whatever it is
            return None
        settings = " ".join(f"{key}={value}" for key, value in wanted.items())
        err.print(f"serve.ingress={cfg.serve.ingress} applies to a Ray this command starts; on a cluster, start "
                  f"Ray with {settings} in its environment (see infra/kuberay/rayservice.yaml)")
        return None
    environment, ingress = local_ray_environment(cfg.serve, lifetime.command_folder())
    os.environ.update(environment)
    return ingress


def results_table(results: list[ResultRow]) -> Table:
    """Teacher, distilled student and plain MLP per horizon, narrow enough for 80 columns; the
    student's MSE against the others in words (better / worse)."""
    from rich import box

    from timedistill.tasks.report import change

    first = results[0]
    teachers = "/".join(dict.fromkeys(row.teacher.name for row in results))  # teacher auto: one per horizon
    title = (f"{first.dataset}: {teachers} teacher -> {first.student.name} student, standardized test "
             "scores (lower is better)") if results else "no results"
    table = Table("h", "model", "MSE", "MAE", "params", "student vs MLP", "student vs teacher", box=box.SIMPLE_HEAD,
                  pad_edge=False, title=title, title_justify="left")
    labels = {"teacher": "teacher", "student": "student", "baseline": "MLP"}
    for row in results:
        for role, score in row.scores().items():
            student = role == "student"
            table.add_row(str(row.horizon), labels[role], f"{score.test_mse:.4f}", f"{score.test_mae:.4f}",
                          f"{score.params:,}", change(row.student_vs_baseline_pct) if student else "",
                          change(row.student_vs_teacher_pct) if student else "")
    return table


def print_results(results: list[ResultRow]) -> None:
    from timedistill.tasks.report import few_epochs

    out.print(results_table(results))
    if (caveat := few_epochs(results)) is not None:
        out.print(f"[yellow]{caveat}[/]", highlight=False)


def main() -> None:  # pragma: no cover - the console script calls app directly
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
