"""Run configuration: the typed sections (``schema``) and reading, type-checking and writing
them (``loading``). This package imports nothing above it; ``fedlease.configure`` adds what
depends on the registries (task defaults, each algorithm's, task's and data source's checks)
and is where a config is loaded from."""

from fedlease.config.loading import (
    build_config,
    changed_fields,
    config_to_dict,
    dump_toml,
    overridden,
    read_toml,
    set_defaults,
)
from fedlease.config.schema import (
    MAX_SEED,
    PRECISIONS,
    DataConfig,
    DatasetConfig,
    FederationConfig,
    LoRAConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "MAX_SEED", "PRECISIONS", "DataConfig", "DatasetConfig", "FederationConfig", "LoRAConfig",
    "ModelConfig", "OutputConfig", "RunConfig", "TrainConfig", "build_config", "changed_fields",
    "config_to_dict", "dump_toml", "overridden", "read_toml", "set_defaults",
]
