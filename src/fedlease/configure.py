"""A run configuration as the library uses it: read and type-checked by ``fedlease.config``, with
the run's task defaults filled in and checked against the registries, where each algorithm, task
and data source brings its own checks (``config_problems``). Load every config from here.
"""

from __future__ import annotations

from pathlib import Path

from fedlease import attacks
from fedlease.algorithms import ALGORITHMS
from fedlease.algorithms.aggregation import AGGREGATION_RULES
from fedlease.algorithms.clustering import SIGNALS
from fedlease.algorithms.wire import TRANSPORT_PRECISIONS
from fedlease.attacks import ATTACKS
from fedlease.config import RunConfig, build_config, overridden, read_toml, set_defaults
from fedlease.config.loading import collect_config, problems_message, value_problems
from fedlease.config.loading import validate as check_values
from fedlease.data.sources import SOURCES
from fedlease.errors import ConfigError
from fedlease.model.quantization import QUANTIZATIONS
from fedlease.plugins import load_plugins
from fedlease.privacy.accountants import ACCOUNTANTS
from fedlease.registry import Registry
from fedlease.tasks import TASKS


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults (the library's, then the task's), then the TOML file, then ``overrides``
    (``{"section": {"key": value}}``); raises ``ConfigError`` naming every problem at once:
    unknown keys (with the closest known one), wrong types, impossible values. The registries
    hold the installed plugins' entries too (``fedlease.plugins``)."""
    load_plugins()
    data = read_toml(path, overrides)
    model_table = data.get("model")
    task = model_table.get("task") if isinstance(model_table, dict) else None
    if isinstance(task, str) and task in TASKS:
        set_defaults(data, TASKS[task].defaults)
    config, problems = collect_config(data)
    problems += value_problems(config, registry_problems)
    if problems:
        raise ConfigError(problems_message(problems, path))
    return config


def with_overrides(config: RunConfig, overrides: dict) -> RunConfig:
    """``config`` with ``overrides`` (``{"section": {"key": value}}``) applied, checked like a
    config file."""
    return validate(build_config(overridden(config, overrides)))


def validate(config: RunConfig) -> RunConfig:
    """``config`` if every value can work (``fedlease.config``'s range checks and the registries'
    checks), else ``ConfigError`` listing every problem."""
    return check_values(config, registry_problems)


def registry_problems(config: RunConfig) -> list[str]:
    """The names a config gives must be in their registries (built-in or a plugin's,
    ``fedlease.plugins``); then each named entry checks the config itself."""
    load_plugins()
    named: list[tuple[str, Registry]] = [
        (config.model.task, TASKS),
        (config.model.quantization, QUANTIZATIONS),
        (config.data.source, SOURCES),
        (config.federation.allocation, SIGNALS),
        (config.federation.algorithm, ALGORITHMS),
        (config.federation.aggregation, AGGREGATION_RULES),
        (config.federation.transport_precision, TRANSPORT_PRECISIONS),
        (config.privacy.accountant, ACCOUNTANTS),
        (config.attack.kind, ATTACKS),
    ]
    problems = [problem for name, registry in named
                if (problem := registry.problem(name)) is not None]
    if config.model.task in TASKS:
        problems += TASKS[config.model.task].config_problems(config)
    if config.data.source in SOURCES:
        source = SOURCES[config.data.source]
        problems += source.config_problems(config.data)
        total = len(config.data.tasks) * config.data.clients_per_task
        if source.uses_tasks and config.federation.clients_per_round > total:
            problems.append(f"federation.clients_per_round = "
                            f"{config.federation.clients_per_round!r}: expected at most the "
                            f"{total} clients of data.tasks x data.clients_per_task")
    if config.federation.algorithm in ALGORITHMS:
        problems += ALGORITHMS[config.federation.algorithm].config_problems(config)
    if config.attack.kind in ATTACKS:
        problems += attacks.config_problems(config)
    return problems
