"""Configuration: the YAML files of this folder and the schema that validates them."""

from timedistill.conf.loading import load_config, storage_root
from timedistill.conf.schema import (
    AUTO,
    FORMAT,
    Config,
    ConfigError,
    DataConfig,
    DistillConfig,
    RayConfig,
    RegistryConfig,
    ServeConfig,
    StorageConfig,
    StudentConfig,
    TeacherConfig,
    stable_hash,
)

__all__ = [
    "AUTO",
    "FORMAT",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "RayConfig",
    "RegistryConfig",
    "ServeConfig",
    "StorageConfig",
    "StudentConfig",
    "TeacherConfig",
    "load_config",
    "stable_hash",
    "storage_root",
]
