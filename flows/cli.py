"""The `timedistill` command line: thin commands over the library, each reading its config,
calling one library function and rendering what it returns (flows/render.py).

Every command takes a config (a YAML path, or the name of a config shipped in conf/, e.g.
`smoke`), repeatable `--set dotted.key=value` overrides, `--data FILE` where it reads a series,
and `--json`, which makes the last line of stdout one JSON object for scripts. Errors are one line
on stderr; `--debug` shows tracebacks. Torch, Ray and Prefect load when a command runs, in its
body, so that `--help` stays fast.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from timedistill.conf import ConfigError, load_config
from timedistill.conf.loading import with_data_file
from timedistill.flows.command import (
    ConfigArg,
    DataOpt,
    DebugOpt,
    FlagOpt,
    JsonOpt,
    RayAddressOpt,
    SetOpt,
    VersionOpt,
    open_storage,
    run_command,
)
from timedistill.flows.prefect_server import prefect_server_warming, start_prefect_server
from timedistill.flows.progress import StepProgress
from timedistill.flows.registry_commands import export_command, models_app
from timedistill.flows.render import (
    emit_json,
    err,
    out,
    print_drift,
    print_ingest,
    print_results,
    print_teachers,
    teachers_json,
)
from timedistill.store.records import RUN_CONFIG
from timedistill.store.storage import Storage

if TYPE_CHECKING:
    from timedistill.tasks.predict import Engine, Layout

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstrings reflow instead of breaking where the source does
    context_settings={"help_option_names": ["-h", "--help"]},
)

DRIFT_EXIT = 3  # `monitor`: a model drifted (0: none did; 1: an error)


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"timedistill {version('timedistill')}")
        raise typer.Exit()


@app.callback(epilog="Examples: `timedistill retrain smoke` (a minute on a laptop), `timedistill retrain smoke "
                     "--data my.csv` (a file of your own), `timedistill serve smoke`, `timedistill predict smoke "
                     "--model smoke-24 --data data/ETTh1.csv`. Every command: `timedistill COMMAND -h`.")
def main_callback(version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                                        metavar="", help="print the version and exit")] = False,
                  ) -> None:
    """TimeDistill: distill big forecasters into a small MLP student, on Ray and Prefect.
    Configs are YAML files or shipped names (smoke, etth1, ettm1, weather, exchange, illness)."""


def quiet_prefect(debug: bool) -> None:
    """The flow's logs still reach Prefect's API; the terminal shows our progress alone."""
    if not debug:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


@app.command()
def ingest(config: ConfigArg, set_: SetOpt = None, data: DataOpt = None, as_json: JsonOpt = False,
           debug: DebugOpt = False) -> None:
    """Validate a CSV/Parquet series and store it as Arrow/Parquet with its splits and scaler."""

    def body() -> None:
        from timedistill.tasks.ingest import ingest, ingest_summary

        cfg = load_config(config, with_data_file(config, data, set_))
        storage = open_storage(cfg)
        dataset = ingest(cfg, storage)
        if as_json:
            emit_json(ingest_summary(dataset, cfg.data.lookback, cfg.data.horizons, storage))
        else:
            print_ingest(dataset, cfg, storage)

    run_command(debug, body)


def run_steps(config: str, overrides: list[str], ray_address: str | None, debug: bool, **stop: Any) -> Any:
    """The retrain flow's steps without Prefect, up to `stop`, with progress on the terminal."""
    load_config(config, overrides)  # fail fast on a bad config
    from timedistill.flows.retrain import run_steps as flow_steps

    with StepProgress() as terminal:
        return flow_steps(config, overrides, ray_address, terminal=terminal, quiet=not debug, **stop)


@app.command()
def teacher(config: ConfigArg, set_: SetOpt = None, data: DataOpt = None, as_json: JsonOpt = False,
            debug: DebugOpt = False, ray_address: RayAddressOpt = None) -> None:
    """Train the teacher of every configured horizon on Ray Train (reused when already trained)."""

    def body() -> None:
        summary = run_steps(config, with_data_file(config, data, set_), ray_address, debug, stop_after="teacher")
        if as_json:
            emit_json(teachers_json(summary))
        else:
            print_teachers(summary)

    run_command(debug, body)


@app.command()
def distill(config: ConfigArg, set_: SetOpt = None, data: DataOpt = None, as_json: JsonOpt = False,
            debug: DebugOpt = False, ray_address: RayAddressOpt = None) -> None:
    """Distill the student from the trained teacher (via its Parquet cache), train the plain-MLP
    baseline beside it, and compare all three on the test split."""

    def body() -> None:
        summary = run_steps(config, with_data_file(config, data, set_), ray_address, debug,
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
        quiet_prefect(debug)
        overrides = with_data_file(config, data, set_)
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
            return
        print_results(summary.results)
        for model in summary.models:
            out.print(model.describe())
        out.print(f"reports: {summary.run_dir}/report.md (with forecast.png, training.png), metrics.json")
        out.print(f"config: {summary.run_dir}/{RUN_CONFIG}")

    run_command(debug, body)


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
        from prefect import serve

        from timedistill.flows.monitor import monitor_deployment
        from timedistill.flows.retrain import deployment

        overrides = with_data_file(config, data, set_)
        cfg = load_config(config, overrides)
        runnable = (monitor_deployment(config, cron, overrides=overrides, name=name, trigger=trigger,
                                       ray_address=ray_address) if monitor
                    else deployment(config, cron, overrides=overrides, name=name, ray_address=ray_address))
        start_prefect_server()
        err.print(f"serving the {'drift monitor' if monitor else 'retrain flow'} of {cfg.data.name} on '{cron}' as "
                  f"deployment '{runnable.name}'; Ctrl-C stops it")
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
    (0 when none did, 1 on an error), so that cron and CI can act on it. The check runs in this
    process, without Ray or a Prefect server (`schedule --monitor` records each run in Prefect)."""

    def body() -> list[Any]:
        from timedistill.tasks.monitor import check_models

        quiet_prefect(debug)
        overrides = with_data_file(config, data, set_)
        cfg = load_config(config, overrides)
        _, reports = check_models(cfg, open_storage(cfg))  # in this process: no Ray, no Prefect server
        if trigger and any(report.drift for report in reports):  # a retrain needs both
            from timedistill.flows.monitor import retrain_drifted
            from timedistill.flows.retrain import progress

            with StepProgress() as terminal, progress(terminal, quiet=not debug):
                reports = retrain_drifted(cfg, config, overrides, ray_address, reports)
        if as_json:
            for report in reports:
                emit_json(report.to_json())
        else:
            print_drift(reports)
        return reports

    if any(report.drift for report in run_command(debug, body)):
        raise typer.Exit(DRIFT_EXIT)


@app.command()
def predict(config: ConfigArg, model: Annotated[str, typer.Option("--model", help="a registered model, e.g. etth1-96")],
            input_: Annotated[str, typer.Option("--input", "--data", help="the series: CSV or Parquet, a path or a "
                                                "URI, wide or long; its columns are matched to the model's "
                                                "variables by name, every row of it read")],
            version: VersionOpt = None,
            output: Annotated[str | None, typer.Option(help="Parquet file to write (default: "
                                                       "predictions/<model>-<version>.parquet)")] = None,
            origins: Annotated[str, typer.Option(help="last, all, or FROM:TO (timestamps of the last history "
                                                 "row): several origins are a backtest")] = "last",
            layout: Annotated[str, typer.Option(help="wide (a column per variable) or long (a row per "
                                                "variable)")] = "wide",
            engine: Annotated[str, typer.Option(help="auto: this process up to 100,000 origins, Ray Data beyond or "
                                                "when a Ray cluster is named; process; ray")] = "auto",
            set_: SetOpt = None, as_json: JsonOpt = False, ray_address: RayAddressOpt = None,
            debug: DebugOpt = False) -> None:
    """Forecast offline from a file with a registered student: from its last window, or from every
    origin of a range with MSE and MAE where the truth is known; writes Parquet. Runs in this
    process; a backtest of very many origins, or one given a Ray cluster, runs on Ray Data."""

    def body() -> None:
        from timedistill.store.storage import make_filesystem
        from timedistill.tasks.predict import predict

        layouts: dict[str, Layout] = {"wide": "wide", "long": "long"}
        engines: dict[str, Engine | None] = {"auto": None, "process": "process", "ray": "ray"}
        if layout not in layouts:
            raise ConfigError(f"--layout {layout!r}: expected wide or long")
        if engine not in engines:
            raise ConfigError(f"--engine {engine!r}: expected auto, process or ray")
        cfg = load_config(config, set_ or [])
        target = output or f"predictions/{model}-{version or 'latest'}.parquet"
        folder, name = (target.rsplit("/", 1) if "/" in target else (".", target))
        if "://" not in target:
            folder = str(Path(folder).expanduser().resolve())
        make_filesystem(folder, cfg.storage.endpoint_override)  # a bad URI fails before any work
        written = Storage(folder, cfg.storage.endpoint_override)
        summary = predict(cfg, open_storage(cfg), model, version, input_, written, name, origins, layouts[layout],
                          engine=engines[engine], ray_address=ray_address, quiet=not debug)
        if as_json:
            emit_json(summary.to_json())
        else:
            out.print(summary.describe())

    run_command(debug, body)


app.add_typer(models_app, name="models")
app.command("export")(export_command)


@app.command("serve")
def serve_command(config: Annotated[str | None, typer.Argument(help="config (default: built-in defaults)")] = None,
                  set_: SetOpt = None, ray_address: RayAddressOpt = None, debug: DebugOpt = False) -> None:
    """Serve the registered students over HTTP with Ray Serve until Ctrl-C or SIGTERM."""

    def body() -> None:
        from timedistill.flows.server import serve_until_stopped

        cfg = load_config(config, set_ or [])
        serve_until_stopped(cfg, open_storage(cfg), ray_address, debug)

    run_command(debug, body)


def main() -> None:  # pragma: no cover - the console script calls app directly
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
