"""Run configuration: typed dataclasses read from TOML, checked before any work starts."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is missing, unknown or impossible; the message names the field."""


TASKS = ("classification", "generation")
# seeds are numpy's range; offsets added to it (per client, per expert) stay far below 2**64
MAX_SEED = 2**32 - 1
# train.precision: autocast dtype of the training step (see training.autocast_dtype)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# federation.allocation: the signal FedLEASE clusters clients by (algorithms/clustering.py)
ALLOCATIONS = ("lora-b", "embedding", "hybrid")
# what each task is scored by; the run summary and comparisons rank by it
PRIMARY_METRIC = {"classification": "accuracy", "generation": "rouge_l"}
# defaults that differ by task; a value in the file or an override wins
TASK_DEFAULTS = {
    "generation": {"model": {"target_modules": ["q_proj", "v_proj"], "max_length": 128}},
}


@dataclass
class ModelConfig:
    # classification: a sequence encoder + a per-client head; generation: a causal LM
    task: str = "classification"
    # local Hugging Face model directory; "" = the default model of the task
    # (all-MiniLM-L6-v2 for classification, SmolLM2-135M-Instruct for generation)
    path: str = ""
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    max_length: int = 64  # tokens per example / per prompt (longer inputs are truncated)
    max_new_tokens: int = 16  # generation: answer tokens learned and generated

    @property
    def metric(self) -> str:
        """The task's primary metric: a key of every client's evaluation metrics."""
        return PRIMARY_METRIC[self.task]


@dataclass
class LoRAConfig:
    rank: int = 4
    alpha: float = 16.0
    dropout: float = 0.05


@dataclass
class DatasetConfig:
    """One ``[[data.datasets]]`` table: a local data file (or saved ``datasets`` folder) that a
    Flower Datasets partitioner splits into clients of one task (see DATA.md, section 3)."""

    path: str = ""  # a .csv/.tsv/.parquet/.json/.jsonl file (or glob), or a save_to_disk folder
    format: str = ""  # "" = from the path: csv, tsv, parquet, json, disk
    name: str = ""  # the task name of its clients; "" = the file's stem
    split: str = ""  # a saved DatasetDict: the split to read; "" = all splits pooled
    # columns, classification
    text: str = "text"
    text_pair: str = ""  # "" = single-text examples
    label: str = "label"
    labels: list[str] = field(default_factory=list)  # label order; [] = sorted label values
    # columns, generation
    instruction: str = "instruction"
    input: str = "input"  # "" = no input column
    output: str = "output"
    # partitioning (Flower Datasets): iid | dirichlet | shard | pathological | natural
    partitioner: str = "iid"
    num_partitions: int = 4  # clients; natural: 0 = one per value of partition_by
    partition_by: str = ""  # column the partitioner reads; "" = the label column
    alpha: float = 0.5  # dirichlet: concentration (smaller = more label skew)
    min_partition_size: int = 10  # dirichlet: resample until every client has this many
    shards_per_partition: int = 2  # shard
    classes_per_partition: int = 2  # pathological
    max_examples: int = 0  # use a seeded sample of this many rows first; 0 = all
    test_fraction: float = 0.2  # of each client's examples, held out for its test split


@dataclass
class DataConfig:
    source: str = "builtin"  # builtin | glue | jsonl | datasets
    path: str = ""  # glue: the glue_data folder; jsonl: a folder of per-client files
    tasks: list[str] = field(default_factory=lambda: ["sentiment", "news", "spam", "uncertainty"])
    clients_per_task: int = 4
    train_per_client: int = 128
    test_per_client: int = 48
    # source = "datasets": the [[data.datasets]] tables, each partitioned into clients
    datasets: list[DatasetConfig] = field(default_factory=list)


@dataclass
class TrainConfig:
    lr: float = 3e-3
    weight_decay: float = 0.05
    batch_size: int = 16
    local_epochs: int = 1
    device: str = "cpu"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto: bf16 (or fp16) on CUDA, fp32 on CPU


@dataclass
class FederationConfig:
    algorithm: str = "fedlease"
    rounds: int = 8
    warmup_rounds: int = 3
    max_experts: int = 4  # M_max: the largest number of clusters tried
    # what FedLEASE clusters clients by: "lora-b" (the paper: their warm-up LoRA B matrices),
    # "embedding" (the mean frozen-model representation of their training examples, one vector
    # per client, computed before training) or "hybrid" (both distances, each scaled to mean 1)
    allocation: str = "lora-b"
    # std of the Gaussian noise a client adds to its (unit-length) embedding before uploading it
    embedding_noise: float = 0.0
    seed: int = 0
    # the server rejects a client upload holding a tensor of larger L2 norm (inf: no bound)
    max_update_norm: float = 100.0


@dataclass
class OutputConfig:
    dir: str = "runs/latest"
    # per-round metrics as TensorBoard events in the run folder (needs fedlease[tensorboard])
    tensorboard: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> RunConfig:
        """Values that parse but cannot work; one message per problem, all at once."""
        problems = []

        def need(ok: bool, name: str, expected: str, value):
            if not ok:
                problems.append(f"{name} = {value!r}: expected {expected}")

        need(self.lora.rank >= 1, "lora.rank", "an integer >= 1", self.lora.rank)
        need(0 < self.lora.alpha < math.inf, "lora.alpha", "a number > 0", self.lora.alpha)
        need(0 <= self.lora.dropout < 1, "lora.dropout", "a number in [0, 1)", self.lora.dropout)
        need(self.model.task in TASKS, "model.task", "one of " + ", ".join(TASKS),
             self.model.task)
        need(self.model.max_new_tokens >= 1, "model.max_new_tokens", "an integer >= 1",
             self.model.max_new_tokens)
        need(len(self.model.target_modules) > 0, "model.target_modules", "a non-empty list",
             self.model.target_modules)
        need(self.model.max_length >= 8, "model.max_length", "an integer >= 8",
             self.model.max_length)
        from fedlease.data.sources import SOURCES

        need(self.data.source in SOURCES, "data.source", "one of " + ", ".join(SOURCES),
             self.data.source)
        need(self.data.source not in ("glue", "jsonl") or bool(self.data.path), "data.path",
             f"a folder for data.source = {self.data.source!r}", self.data.path)
        need(self.data.source != "builtin" or not self.data.path, "data.path",
             "no path with data.source = 'builtin' (the built-in sample ships with fedlease); "
             "set data.source = 'jsonl' or 'glue' to read this folder", self.data.path)
        need(self.data.source in ("jsonl", "datasets") or len(self.data.tasks) > 0,
             "data.tasks", "a non-empty list of task names", self.data.tasks)
        need(len(set(self.data.tasks)) == len(self.data.tasks), "data.tasks",
             "each task once (a task's clients are data.clients_per_task)", self.data.tasks)
        problems += dataset_problems(self.data)
        need(self.data.clients_per_task >= 1, "data.clients_per_task", "an integer >= 1",
             self.data.clients_per_task)
        need(self.data.train_per_client >= 2, "data.train_per_client", "an integer >= 2",
             self.data.train_per_client)
        need(self.data.test_per_client >= 1, "data.test_per_client", "an integer >= 1",
             self.data.test_per_client)
        need(0 < self.train.lr < math.inf, "train.lr", "a number > 0", self.train.lr)
        need(0 <= self.train.weight_decay < math.inf, "train.weight_decay", "a number >= 0",
             self.train.weight_decay)
        need(self.train.batch_size >= 1, "train.batch_size", "an integer >= 1",
             self.train.batch_size)
        need(self.train.local_epochs >= 1, "train.local_epochs", "an integer >= 1",
             self.train.local_epochs)
        need(self.train.device in ("cpu", "cuda") or self.train.device.startswith("cuda:"),
             "train.device", "cpu or cuda", self.train.device)
        need(self.train.precision in PRECISIONS, "train.precision",
             "one of " + ", ".join(PRECISIONS), self.train.precision)
        need(self.federation.rounds >= 1, "federation.rounds", "an integer >= 1",
             self.federation.rounds)
        need(0 <= self.federation.seed <= MAX_SEED, "federation.seed",
             f"an integer in [0, {MAX_SEED}]", self.federation.seed)
        need(self.federation.max_experts >= 1, "federation.max_experts", "an integer >= 1",
             self.federation.max_experts)
        need(self.federation.allocation in ALLOCATIONS, "federation.allocation",
             "one of " + ", ".join(ALLOCATIONS), self.federation.allocation)
        need(0 <= self.federation.embedding_noise < math.inf, "federation.embedding_noise",
             "a number >= 0", self.federation.embedding_noise)
        need(self.federation.max_update_norm > 0, "federation.max_update_norm",
             "a number > 0 (inf: no bound)", self.federation.max_update_norm)
        need(bool(self.output.dir), "output.dir", "a folder path", self.output.dir)
        need(not self.output.tensorboard or importlib.util.find_spec("tensorboard") is not None,
             "output.tensorboard", "false, or the tensorboard package installed (pip install "
             "'fedlease[tensorboard]')", self.output.tensorboard)
        from fedlease.algorithms import ALGORITHMS

        need(self.federation.algorithm in ALGORITHMS, "federation.algorithm",
             "one of " + ", ".join(sorted(ALGORITHMS)), self.federation.algorithm)
        algorithm = ALGORITHMS.get(self.federation.algorithm)
        if algorithm is not None and algorithm.uses_warmup:
            # the embedding is known before training, so it needs no warm-up LoRAs
            least = 0 if self.federation.allocation == "embedding" else 1
            need(least <= self.federation.warmup_rounds < self.federation.rounds,
                 "federation.warmup_rounds",
                 f"an integer in [{least}, rounds) for allocation = "
                 f"{self.federation.allocation!r}", self.federation.warmup_rounds)
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return self


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
        need(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", task_name(d)) is not None, "name",
             "a task name of letters, digits, '_', '-' or '.' (client ids and file names are "
             f"made of it; the path's stem {task_name(d)!r} is not one)", d.name)
    names = [task_name(d) for d in data.datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"data.datasets: task name(s) {repeated} are used by more than one "
                        "table; give each its own name")
    return problems


def task_name(dataset: DatasetConfig) -> str:
    """The task of a dataset's clients: its ``name``, else the file's (or folder's) stem."""
    return dataset.name or Path(dataset.path.rstrip("/")).name.split(".")[0]


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
    model_table = data.get("model")
    task = model_table.get("task") if isinstance(model_table, dict) else None
    for section, values in TASK_DEFAULTS.get(task, {}).items() if isinstance(task, str) else ():
        table = data.setdefault(section, {})
        if isinstance(table, dict):  # a non-table is reported by _build
            for key, value in values.items():
                table.setdefault(key, value)
    try:
        config = _build(RunConfig, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None
    return config.validate()


def with_overrides(config: RunConfig, overrides: dict) -> RunConfig:
    """``config`` with ``overrides`` (``{"section": {"key": value}}``) applied, checked like a
    config file."""
    data = config_to_dict(config)
    for section, values in overrides.items():
        if not isinstance(data.get(section), dict):
            raise ConfigError(f"unknown section [{section}]; expected one of {sorted(data)}")
        data[section].update(values)
    return _build(RunConfig, data, "").validate()


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
