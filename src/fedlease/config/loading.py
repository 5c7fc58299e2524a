"""Reading, checking and writing a run configuration (TOML), before any work starts."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import sys
import typing
from pathlib import Path

from fedlease.config.schema import (
    ALLOCATIONS,
    MAX_SEED,
    PRECISIONS,
    QUANTIZATIONS,
    DataConfig,
    ModelConfig,
    RunConfig,
)
from fedlease.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def validate(config: RunConfig) -> RunConfig:
    """Values that parse but cannot work; one message per problem, all at once."""
    problems = []

    def need(ok: bool, name: str, expected: str, value):
        if not ok:
            problems.append(f"{name} = {value!r}: expected {expected}")

    need(config.lora.rank >= 1, "lora.rank", "an integer >= 1", config.lora.rank)
    need(0 < config.lora.alpha < math.inf, "lora.alpha", "a number > 0", config.lora.alpha)
    need(0 <= config.lora.dropout < 1, "lora.dropout", "a number in [0, 1)", config.lora.dropout)
    from fedlease.tasks import TASKS

    need(config.model.task in TASKS, "model.task", "one of " + ", ".join(TASKS),
         config.model.task)
    need(config.model.max_new_tokens >= 1, "model.max_new_tokens", "an integer >= 1",
         config.model.max_new_tokens)
    need(len(config.model.target_modules) > 0, "model.target_modules", "a non-empty list",
         config.model.target_modules)
    need(config.model.max_length >= 8, "model.max_length", "an integer >= 8",
         config.model.max_length)
    from fedlease.data.sources import SOURCES

    need(config.data.source in SOURCES, "data.source", "one of " + ", ".join(SOURCES),
         config.data.source)
    source = SOURCES.get(config.data.source)
    need(source is None or source.path != "folder" or bool(config.data.path), "data.path",
         f"a folder for data.source = {config.data.source!r}", config.data.path)
    need(source is None or source.path != "none" or not config.data.path, "data.path",
         f"no path with data.source = {config.data.source!r} (the built-in sample ships with "
         "fedlease); set data.source = 'jsonl' or 'glue' to read this folder", config.data.path)
    need(source is None or not source.uses_tasks or len(config.data.tasks) > 0,
         "data.tasks", "a non-empty list of task names", config.data.tasks)
    need(len(set(config.data.tasks)) == len(config.data.tasks), "data.tasks",
         "each task once (a task's clients are data.clients_per_task)", config.data.tasks)
    problems += dataset_problems(config.data)
    problems += model_loading_problems(config.model)
    need(config.data.clients_per_task >= 1, "data.clients_per_task", "an integer >= 1",
         config.data.clients_per_task)
    need(config.data.train_per_client >= 2, "data.train_per_client", "an integer >= 2",
         config.data.train_per_client)
    need(config.data.test_per_client >= 1, "data.test_per_client", "an integer >= 1",
         config.data.test_per_client)
    need(0 < config.train.lr < math.inf, "train.lr", "a number > 0", config.train.lr)
    need(0 <= config.train.weight_decay < math.inf, "train.weight_decay", "a number >= 0",
         config.train.weight_decay)
    need(config.train.batch_size >= 1, "train.batch_size", "an integer >= 1",
         config.train.batch_size)
    need(config.train.local_epochs >= 1, "train.local_epochs", "an integer >= 1",
         config.train.local_epochs)
    need(config.train.device in ("cpu", "cuda") or config.train.device.startswith("cuda:"),
         "train.device", "cpu or cuda", config.train.device)
    need(config.train.precision in PRECISIONS, "train.precision",
         "one of " + ", ".join(PRECISIONS), config.train.precision)
    need(config.federation.rounds >= 1, "federation.rounds", "an integer >= 1",
         config.federation.rounds)
    need(0 <= config.federation.seed <= MAX_SEED, "federation.seed",
         f"an integer in [0, {MAX_SEED}]", config.federation.seed)
    need(config.federation.max_experts >= 1, "federation.max_experts", "an integer >= 1",
         config.federation.max_experts)
    need(config.federation.allocation in ALLOCATIONS, "federation.allocation",
         "one of " + ", ".join(ALLOCATIONS), config.federation.allocation)
    need(0 <= config.federation.embedding_noise < math.inf, "federation.embedding_noise",
         "a number >= 0", config.federation.embedding_noise)
    need(config.federation.max_update_norm > 0, "federation.max_update_norm",
         "a number > 0 (inf: no bound)", config.federation.max_update_norm)
    need(bool(config.output.dir), "output.dir", "a folder path", config.output.dir)
    need(not config.output.tensorboard or importlib.util.find_spec("tensorboard") is not None,
         "output.tensorboard", "false, or the tensorboard package installed (pip install "
         "'fedlease[tensorboard]')", config.output.tensorboard)
    from fedlease.algorithms import ALGORITHMS

    need(config.federation.algorithm in ALGORITHMS, "federation.algorithm",
         "one of " + ", ".join(sorted(ALGORITHMS)), config.federation.algorithm)
    algorithm = ALGORITHMS.get(config.federation.algorithm)
    if algorithm is not None and algorithm.uses_warmup:
        # the embedding is known before training, so it needs no warm-up LoRAs
        least = 0 if config.federation.allocation == "embedding" else 1
        need(least <= config.federation.warmup_rounds < config.federation.rounds,
             "federation.warmup_rounds",
             f"an integer in [{least}, rounds) for allocation = "
             f"{config.federation.allocation!r}", config.federation.warmup_rounds)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def model_loading_problems(model: ModelConfig) -> list[str]:
    """What is wrong with how the base model is loaded (quantization, a hub id's revision)."""
    problems = []
    if model.quantization not in QUANTIZATIONS:
        problems.append(f"model.quantization = {model.quantization!r}: expected one of "
                        + ", ".join(QUANTIZATIONS))
    if model.revision and (not model.path or Path(model.path).expanduser().is_dir()):
        problems.append(f"model.revision = {model.revision!r}: expected \"\" unless model.path "
                        "is a hub id (a local folder has no revisions)")
    return problems


def dataset_problems(data: DataConfig) -> list[str]:
    """What is wrong with the ``[[data.datasets]]`` tables (the file itself is read later)."""
    from fedlease.data.formats import FORMATS
    from fedlease.data.partitioners import PARTITIONERS

    if data.source != "datasets":
        return ([f"[[data.datasets]] is given ({len(data.datasets)} table(s)) but data.source = "
                 f"{data.source!r}: set data.source = \"datasets\" to use them"]
                if data.datasets else [])
    if not data.datasets:
        return ["data.source = 'datasets' needs at least one [[data.datasets]] table "
                "(path, partitioner, num_partitions, ...)"]
    problems = []
    for i, d in enumerate(data.datasets):
        where = f"data.datasets[{i}]"

        def need(ok: bool, name: str, expected: str, value, where: str = where):
            if not ok:
                problems.append(f"{where}.{name} = {value!r}: expected {expected}")

        need(bool(d.path), "path", "a data file or a save_to_disk folder", d.path)
        need(d.format in ("", *FORMATS), "format", "one of " + ", ".join(FORMATS)
             + " (or \"\" to infer it from the path)", d.format)
        need(d.partitioner in PARTITIONERS, "partitioner", "one of " + ", ".join(PARTITIONERS),
             d.partitioner)
        need(d.num_partitions >= (0 if d.partitioner == "natural" else 1), "num_partitions",
             "an integer >= 1" + (" (0: one client per value)" if d.partitioner == "natural"
                                  else ""), d.num_partitions)
        need(d.partitioner != "natural" or bool(d.partition_by), "partition_by",
             "the column whose values are the clients (natural partitioning)", d.partition_by)
        need(0 < d.alpha < math.inf, "alpha", "a number > 0", d.alpha)
        need(d.min_partition_size >= 0, "min_partition_size", "an integer >= 0",
             d.min_partition_size)
        need(d.shards_per_partition >= 1, "shards_per_partition", "an integer >= 1",
             d.shards_per_partition)
        need(d.classes_per_partition >= 1, "classes_per_partition", "an integer >= 1",
             d.classes_per_partition)
        need(d.max_examples >= 0, "max_examples", "an integer >= 0 (0: all rows)",
             d.max_examples)
        need(0 < d.test_fraction < 1, "test_fraction", "a number in (0, 1)", d.test_fraction)
        need(len(set(d.labels)) == len(d.labels) and len(d.labels) != 1, "labels",
             "[] or a list of at least 2 distinct label values", d.labels)
        for column in ("text", "label", "instruction", "output"):
            need(bool(getattr(d, column)), column, "a column name", getattr(d, column))
        need(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", d.task_name) is not None, "name",
             "a task name of letters, digits, '_', '-' or '.' (client ids and file names are "
             f"made of it; the path's stem {d.task_name!r} is not one)", d.name)
    names = [d.task_name for d in data.datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"data.datasets: task name(s) {repeated} are used by more than one "
                        "table; give each its own name")
    return problems


def _build(cls, values: dict, where: str):
    """Construct dataclass ``cls`` from a TOML table, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise ConfigError(f"unknown key(s) {unknown} in {place}; expected some of {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        label = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, label)
        else:
            kwargs[name] = _check_type(value, hint, label)
    return cls(**kwargs)


def _check_type(value, hint, label: str):
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if dataclasses.is_dataclass(item):  # an array of tables, e.g. [[data.datasets]]
            if not isinstance(value, list):
                raise ConfigError(f"{label} = {value!r}: expected a list of tables "
                                  f"([[{label}]])")
            return [_build(item, v, f"{label}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f"{label} = {value!r}: expected a list of {item.__name__}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{label} = {value!r}: expected {hint.__name__}")
    return value


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults, then the TOML file, then ``overrides`` (``{"section": {"key": value}}``)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder; expected a TOML file") from None
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read ({err.strerror or err})") \
                from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {path} is not UTF-8 text ({err.reason} at byte "
                              f"{err.start}); expected a TOML file") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    for section, values in (overrides or {}).items():
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table, got {type(table).__name__}")
        table.update(values)
    from fedlease.tasks import TASKS

    model_table = data.get("model")
    task = model_table.get("task") if isinstance(model_table, dict) else None
    defaults = TASKS[task].defaults if isinstance(task, str) and task in TASKS else {}
    for section, values in defaults.items():
        table = data.setdefault(section, {})
        if isinstance(table, dict):  # a non-table is reported by _build
            for key, value in values.items():
                table.setdefault(key, value)
    try:
        config = _build(RunConfig, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None
    return validate(config)


def with_overrides(config: RunConfig, overrides: dict) -> RunConfig:
    """``config`` with ``overrides`` (``{"section": {"key": value}}``) applied, checked like a
    config file."""
    data = config_to_dict(config)
    for section, values in overrides.items():
        if not isinstance(data.get(section), dict):
            raise ConfigError(f"unknown section [{section}]; expected one of {sorted(data)}")
        data[section].update(values)
    return validate(_build(RunConfig, data, ""))


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def changed_fields(saved: dict, current: dict, ignore=frozenset()) -> list[str]:
    """``section.key`` of every value of ``current`` (a ``config_to_dict``) that ``saved`` (one
    too, or its JSON form) lacks or holds differently, but those in ``ignore`` (pairs)."""
    return [f"{section}.{key}" for section, values in current.items()
            for key, value in values.items()
            if (section, key) not in ignore
            and (saved.get(section) if isinstance(saved.get(section), dict) else {}).get(key)
            != value]


def dump_toml(config: RunConfig) -> str:
    """The config as TOML (all values are strings, numbers, booleans or lists of those)."""
    lines = []
    for section, values in config_to_dict(config).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table (an item of [[data.datasets]])
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)
