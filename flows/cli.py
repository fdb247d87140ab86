"""The `timedistill` command line.

Every command takes a config (a YAML path, or the name of a config shipped in conf/, e.g.
`smoke`), repeatable `--set dotted.key=value` overrides, and `--json`, which makes the last line
of stdout one JSON object for scripts. Errors are one line on stderr; `--debug` shows tracebacks.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from conf import Config, ConfigError, load_config, storage_root
from flows.progress import StepProgress
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


RayAddressOpt = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (default: "
                                                  "ray.address, $RAY_ADDRESS, else a local Ray)")]


@app.command()
def teacher(config: ConfigArg, set_: SetOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
            ray_address: RayAddressOpt = None) -> None:
    """Train the teacher of every configured horizon on Ray Train (reused when already trained)."""
    from tasks import steps

    def body() -> None:
        cfg = load_config(config, set_ or [])
        with steps.Pipeline(cfg, ray_address=ray_address, quiet=not debug) as pipe, StepProgress() as progress:
            dataset = pipe.ingest()
            progress.step("ingest", 0.0, dataset.cached, dataset.fingerprint)
            results = []
            for horizon in cfg.data.horizons:
                began = time.perf_counter()
                trained = pipe.teacher(horizon, on_event=progress)
                progress.step("teacher", time.perf_counter() - began, trained.cached,
                              f"h={horizon} val_mse {trained.meta['val_mse']:.4f}")
                results.append({
                    "dataset": dataset.name, "horizon": horizon, "teacher": trained.meta["name"],
                    "checkpoint": pipe.storage.uri(trained.weights_path), "val_mse": trained.meta["val_mse"],
                    "test_mse": trained.meta["test_mse"], "test_mae": trained.meta["test_mae"],
                    "epochs": trained.meta["epochs"], "params": trained.meta["params"], "cached": trained.cached,
                })
        if as_json:
            emit_json({"results": results})
        else:
            table = Table("dataset", "horizon", "teacher", "params", "epochs", "val MSE", "test MSE", "test MAE")
            for r in results:
                table.add_row(r["dataset"], str(r["horizon"]), r["teacher"], f"{r['params']:,}", str(r["epochs"]),
                              f"{r['val_mse']:.4f}", f"{r['test_mse']:.4f}", f"{r['test_mae']:.4f}")
            out.print(table)

    run_command(debug, body)


@app.command()
def distill(config: ConfigArg, set_: SetOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
            ray_address: RayAddressOpt = None) -> None:
    """Distill the student from the trained teacher (via its Parquet cache), train the plain-MLP
    baseline beside it, and compare all three on the test split."""
    from tasks import steps

    def body() -> None:
        cfg = load_config(config, set_ or [])
        with steps.Pipeline(cfg, ray_address=ray_address, quiet=not debug) as pipe, StepProgress() as progress:
            dataset = pipe.ingest()
            progress.step("ingest", 0.0, dataset.cached, dataset.fingerprint)
            results, caches, trained_students = [], [], []
            for horizon in cfg.data.horizons:
                trained = pipe.require_teacher(horizon)
                began = time.perf_counter()
                cache = pipe.cache(trained)
                if cache is not None:
                    caches.append(cache)
                    progress.step("cache", time.perf_counter() - began, cache.hit,
                                  f"h={horizon} {cache.meta['bytes'] / 2**20:.1f} MiB")
                began = time.perf_counter()
                students = pipe.students(trained, cache, on_event=progress)
                progress.step("distill", time.perf_counter() - began, students.cached, f"h={horizon}")
                trained_students.append(students)
                results.append(pipe.evaluate(trained, students))
        summary = steps.cache_summary(pipe.storage, caches, trained_students)
        if as_json:
            emit_json({"results": results, "cache": summary, "run_dir": pipe.storage.uri(pipe.run_dir)})
        else:
            print_results(results)
            if caches:
                state = "reused" if summary["hit"] else "built"
                out.print(f"teacher cache {state}: {summary['path']} ({summary['bytes'] / 2**20:.1f} MiB); "
                          f"teacher batches run: {summary['teacher_forward_batches']}")

    run_command(debug, body)


@app.command()
def retrain(config: ConfigArg, set_: SetOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
            ray_address: RayAddressOpt = None) -> None:
    """Run the whole pipeline as a Prefect flow: ingest, teacher, cache, distill + baseline,
    evaluate, register. Steps whose inputs did not change are skipped."""

    def body() -> None:
        if not debug:  # the flow's logs still reach Prefect's API; the terminal shows progress
            os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        load_config(config, set_ or [])  # fail fast on a bad config, before any server starts
        with prefect_server_warming():
            from flows.retrain import progress
            from flows.retrain import retrain as retrain_flow
        with StepProgress() as bar, progress(bar, on_step=lambda *a: step_line(bar, *a), quiet=not debug):
            summary = retrain_flow(config=config, overrides=list(set_ or []), ray_address=ray_address)
        if as_json:
            emit_json(summary)
        else:
            print_results(summary["results"])
            for model in summary["models"]:
                verdict = f"registered as {model['version']}" if model["registered"] else "not registered"
                out.print(f"{model['name']}: {verdict} ({model['reason']})")
            out.print(f"reports: {summary['run_dir']}/report.md, forecast.png, metrics.json")

    run_command(debug, body)


@contextmanager
def prefect_server_warming() -> Iterator[None]:
    """Without PREFECT_API_URL the first flow run starts Prefect's temporary server and waits
    for it (10-20 s of CPU on 2 cores). Start it in a thread while the body imports torch, Ray
    and the flow (seconds more of CPU), and wait for it on the way out. A failed start here is
    left to the flow run, which starts the server itself and reports the error."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        yield
        return

    def start() -> None:
        from prefect.server.api.server import SubprocessASGIServer

        with suppress(Exception):  # the flow run starts it again and reports why
            SubprocessASGIServer().start()  # the instance the flow run's client will use

    starter = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    starter.start()
    try:
        yield
    finally:
        starter.join()


def step_line(bar: StepProgress, name: str, seconds: float, cached: bool, result: Any) -> None:
    detail = ""
    if name == "teacher":
        detail = f"h={result.meta['horizon']} {result.meta['name']} val_mse {result.meta['val_mse']:.4f}"
    elif name == "cache" and result is not None:
        detail = f"h={result.meta['horizon']} {result.meta['bytes'] / 2**20:.1f} MiB"
    elif name == "distill":
        detail = f"h={result.meta['horizon']}"
    elif name == "register":
        detail = f"{result.model}: {result.version if result.registered else 'not registered'} ({result.reason})"
    elif name == "ingest":
        detail = result.fingerprint
    bar.step(name, seconds, cached, detail)


@app.command()
def schedule(config: ConfigArg, cron: Annotated[str, typer.Option(help="cron schedule, e.g. '0 3 * * *'")],
             set_: SetOpt = None, name: Annotated[str | None, typer.Option(help="deployment name")] = None,
             ray_address: RayAddressOpt = None, debug: DebugOpt = False) -> None:
    """Serve the retrain flow on a cron schedule (Prefect `flow.serve`); runs until Ctrl-C."""

    def body() -> None:
        from flows.retrain import deployment

        cfg = load_config(config, set_ or [])
        runnable = deployment(config, cron, overrides=list(set_ or []), name=name, ray_address=ray_address)
        err.print(f"serving the retrain flow of {cfg.data.name} on '{cron}' as deployment "
                  f"'{runnable.name}'; Ctrl-C stops it")
        from prefect import serve

        serve(runnable)

    run_command(debug, body)


@app.command("serve")
def serve_command(config: Annotated[str | None, typer.Argument(help="config (default: built-in defaults)")] = None,
                  set_: SetOpt = None, ray_address: RayAddressOpt = None, debug: DebugOpt = False) -> None:
    """Serve the registered students over HTTP with Ray Serve until Ctrl-C or SIGTERM."""

    def body() -> None:
        import signal
        import threading

        cfg = load_config(config, set_ or [])
        storage = open_storage(cfg)
        use_ray_environment(cfg, ray_address)

        from ray import serve

        from serving.app import APP_NAME, build_app
        from tasks.registry import list_models
        from tasks.runtime import ray_session

        stop = threading.Event()
        with ray_session(cfg, ray_address, quiet=not debug):
            # after Ray starts: ray.init installs a SIGTERM handler of its own that aborts the process
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
            serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
            try:
                serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
                names = list_models(storage)
                err.print(f"serving {len(names)} model(s) from {storage.uri('registry')}: {', '.join(names) or '-'}")
                out.print(f"listening on http://{cfg.serve.host}:{cfg.serve.port} (docs: /docs); Ctrl-C stops")
                stop.wait()
            finally:
                err.print("shutting down Ray Serve")
                serve.shutdown()

    run_command(debug, body)


def use_ray_environment(cfg: Config, address: str | None) -> None:
    """Give a Ray that this command starts the environment `serve.ingress` needs (read by Ray
    Serve at import, so before the first `ray.serve` import). A running cluster keeps its own."""
    import ray

    from serving.ingress import ray_environment
    from tasks.runtime import ray_address

    wanted = ray_environment(cfg.serve)
    if not wanted:
        return
    if ray.is_initialized() or ray_address(cfg, address):
        settings = " ".join(f"{key}={value}" for key, value in wanted.items())
        err.print(f"serve.ingress={cfg.serve.ingress} applies to a Ray this command starts; on a cluster, start "
                  f"Ray with {settings} in its environment (see infra/kuberay/rayservice.yaml)")
        return
    os.environ.update(wanted)


def print_results(results: list[dict[str, Any]]) -> None:
    table = Table("dataset", "h", "model", "test MSE", "test MAE", "params", "latency ms", "vs MLP", "vs teacher")
    for r in results:
        for role in ("teacher", "student", "baseline"):
            if role not in r:
                continue
            m = r[role]
            versus = (f"{r['student_vs_baseline_pct']:+.1f}%" if role == "student" and "student_vs_baseline_pct" in r
                      else "")
            teach = f"{r['student_vs_teacher_pct']:+.1f}%" if role == "student" else ""
            label = {"teacher": f"teacher ({m['name']})", "student": f"student ({m['name']})",
                     "baseline": "MLP baseline"}[role]
            table.add_row(r["dataset"], str(r["horizon"]), label, f"{m['test_mse']:.4f}", f"{m['test_mae']:.4f}",
                          f"{m['params']:,}", f"{m['latency_ms']:.2f}", versus, teach)
    out.print(table)


def main() -> None:  # pragma: no cover - the console script calls app directly
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
