"""Reading a config: a YAML file (or the name of one shipped in conf/), `--set dotted.key=value`
overrides and `--data FILE`, validated into one frozen Config (conf/schema.py) whose relative
paths are resolved; errors name the file and the key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from timedistill.conf.schema import Config, ConfigError, DataConfig
from timedistill.conf.uris import dataset_name, has_password, redact

PACKAGE_CONF_DIR = Path(__file__).resolve().parent


# What `--data FILE` (and `timedistill.fit`) set: the file, and nothing of the config's own data
# (its name, its time column and layout, its variables, its calendar split) but what fits any file.
DATA_FILE_RESETS = ("timestamp", "timestamp_format", "target", "columns", "id_column", "value_column")


def data_file_overrides(path: str, data: DataConfig | None = None) -> list[str]:
    """`--set` overrides that point a config at another file: named after it, its time column,
    layout and variables found in it, and a calendar split of the config's own data (ett-hour,
    ett-minute) replaced by the default ratio split."""
    overrides = [f"data.path={json.dumps(path)}", f"data.name={json.dumps(dataset_name(path))}", "data.format=auto",
                 *[f"data.{key}=null" for key in DATA_FILE_RESETS]]
    if data is not None and data.split.startswith("ett-"):
        overrides.append("data.split=ratio")
    return overrides


def resolve_config_path(path: str | Path) -> Path:
    """A config is a file path, or the bare name of a config shipped in conf/ (`smoke`)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate.resolve()
    shipped = PACKAGE_CONF_DIR / f"{candidate.name.removesuffix('.yaml')}.yaml"
    if candidate.suffix in ("", ".yaml") and candidate.parent == Path(".") and shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {path}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when path is None), apply `dotted.key=value`
    overrides (values parsed as YAML) and validate the result into one frozen Config."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    base_dir = Path.cwd()
    if path is not None:
        file = resolve_config_path(path)
        source, base_dir = str(file), file.parent
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        raw = loaded
    for override in overrides:
        _apply_override(raw, override)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    return _resolve_data_path(config, base_dir)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {redact(override)!r}: expected dotted.key=value")
    if has_password(text):  # overrides are kept: Prefect's flow parameters, shell history, `ps`
        raise ConfigError(f"--set {key}: {redact(text.strip())} holds a password, which an override would leave in "
                          "Prefect's parameters and the shell's history; give it in PGPASSWORD or ~/.pgpass "
                          "(or the config file, which nothing copies it from)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {exc}") from None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        if error["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: {key}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def _resolve_data_path(config: Config, base_dir: Path) -> Config:
    """Relative data paths resolve against the config file's folder first, then the working
    directory; URIs are left alone."""
    path = config.data.path
    if "://" in path or Path(path).is_absolute():
        return config
    for root in (base_dir, Path.cwd()):
        candidate = (root / path).resolve()
        if candidate.exists():
            break
    else:
        candidate = (base_dir / path).resolve()  # missing: ingestion reports it with this path
    data = config.data.model_copy(update={"path": str(candidate)})
    return config.model_copy(update={"data": data})


def storage_root(config: Config) -> str:
    """The storage root as an absolute URI or path: Ray workers run in another directory."""
    root = config.storage.root
    if "://" in root:
        return root
    return str(Path(os.path.expanduser(root)).resolve())


def with_data_file(config: str | Path | None, data: str | None, overrides: list[str] | None) -> list[str]:
    """`overrides` after those that point `config` at `data` (`--data FILE`; the file, named after
    itself, its columns read off it), so that an override still wins."""
    if data is None:
        return list(overrides or [])
    path = data if "://" in data else str(Path(data).expanduser().resolve())
    return [*data_file_overrides(path, load_config(config, overrides or []).data), *(overrides or [])]
