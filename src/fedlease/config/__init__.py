"""Run configuration: the typed sections (``schema``) and reading, checking and writing them
(``loading``). Modules the registries hold (algorithms, data sources, tasks) import ``schema``;
everything above them imports from here."""

from fedlease.config.loading import (
    changed_fields,
    config_to_dict,
    dump_toml,
    load_config,
    validate,
    with_overrides,
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
    "ModelConfig", "OutputConfig", "RunConfig", "TrainConfig", "changed_fields", "config_to_dict",
    "dump_toml", "load_config", "validate", "with_overrides",
]
