"""The registry's commands (`models list | show | rollback`) and `export`: what is registered, which
version serves, and a registered student as one file for other runtimes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from timedistill.conf import ConfigError
from timedistill.flows.command import (
    DebugOpt,
    FlagOpt,
    JsonOpt,
    ModelArg,
    RootConfigOpt,
    SetOpt,
    StorageOpt,
    VersionOpt,
    registry_storage,
    run_command,
)
from timedistill.flows.render import emit_json, err, model_record, out, print_model, print_models
from timedistill.store.storage import Storage
from timedistill.tasks.errors import StepError

if TYPE_CHECKING:
    from timedistill.tasks.export import Format

models_app = typer.Typer(help="The model registry: list, show, roll back.", no_args_is_help=True)


@models_app.command("list")
def models_list(config: Annotated[str | None, typer.Argument(help="config whose storage root to read")] = None,
                set_: SetOpt = None, storage: StorageOpt = None, as_json: JsonOpt = False,
                debug: DebugOpt = False) -> None:
    """Every registered model: its LATEST version, window, variables and scores."""

    def body() -> None:
        from timedistill.store.registry import list_models, read_version, versions

        store = registry_storage(config, set_, storage)
        entries = [read_version(store, name) for name in list_models(store)]
        listed = {entry.model: versions(store, entry.model) for entry in entries}
        if as_json:
            emit_json({"models": [model_record(store, entry, listed[entry.model]) for entry in entries]})
        else:
            print_models(store, entries, listed)

    run_command(debug, body)


@models_app.command("show")
def models_show(name: ModelArg, version: VersionOpt = None, config: RootConfigOpt = None, set_: SetOpt = None,
                storage: StorageOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """One registered version: what it forecasts, from what, and how it scored."""

    def body() -> None:
        from timedistill.store.registry import read_version, versions

        store = registry_storage(config, set_, storage)
        entry = read_version(store, name, version)
        listed = versions(store, name)
        if as_json:
            emit_json(model_record(store, entry, listed))
        else:
            print_model(entry, listed)

    run_command(debug, body)


@models_app.command("rollback")
def models_rollback(name: ModelArg, to: Annotated[str, typer.Option("--to", help="the version to serve, e.g. v2")],
                    force: Annotated[bool, typer.Option("--force", help="point LATEST at it even when it does not "
                                                        "load and answer a probe", **FlagOpt)] = False,
                    config: RootConfigOpt = None, set_: SetOpt = None, storage: StorageOpt = None,
                    as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Point a model's LATEST at an earlier version, once it loads and answers a probe as a server
    would check it; a running server switches within serve.reload_interval_s (or at once on POST
    /v1/reload)."""

    def body() -> None:
        from timedistill.store.errors import BrokenVersion
        from timedistill.store.forecaster import load_verified
        from timedistill.tasks.registry import rollback

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


def export_command(model: ModelArg, fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript")],
                   output: Annotated[str, typer.Option(help="folder (or URI) to write the file and its card "
                                                       "to")] = "exports",
                   version: VersionOpt = None, config: RootConfigOpt = None, set_: SetOpt = None,
                   storage: StorageOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Write a registered student as one self-contained file (data units in and out: the scaler
    is folded in) with a JSON card beside it, one card per file (smoke-24-v1.onnx and
    smoke-24-v1.onnx.json)."""

    def body() -> None:
        from timedistill.tasks.export import export

        formats: dict[str, Format] = {"onnx": "onnx", "torchscript": "torchscript"}
        if fmt not in formats:
            raise ConfigError(f"--format {fmt!r}: expected onnx or torchscript")
        store = registry_storage(config, set_, storage)
        target = Storage(output, store.endpoint_override)
        try:
            card = export(store, model, version, formats[fmt], target)
        except ModuleNotFoundError as exc:  # the export extra is optional
            raise StepError(f"--format onnx needs {exc.name}: pip install 'timedistill[export]'") from None
        if as_json:
            emit_json(card.to_json() | {"path": target.uri(card.file), "card": target.uri(card.card_file)})
        else:
            out.print(f"{card.describe()}\n  {target.uri(card.file)}, card {target.uri(card.card_file)}")

    run_command(debug, body)
