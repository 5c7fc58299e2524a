"""Reading, type-checking and writing a run configuration (TOML), and the range checks of the
values every run reads. What depends on the registries (a task's defaults, the names of tasks,
data sources and algorithms, each one's own checks) is ``fedlease.configure``'s: this layer
imports nothing above ``config``."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from fedlease.config.schema import (
    MAX_SEED,
    PRECISIONS,
    DataConfig,
    LoRAConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from fedlease.errors import ConfigError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def validate(config: RunConfig,
             *more_checks: Callable[[RunConfig], list[str]]) -> RunConfig:
    """``config`` if every value can work, else ``ConfigError`` listing every problem."""
    problems = value_problems(config, *more_checks)
    if problems:
        raise ConfigError(problems_message(problems))
    return config


def problems_message(problems: list[str], path: str | Path | None = None) -> str:
    """One error message for every problem of a configuration (of the file ``path``)."""
    where = f" {path}" if path else ""
    return f"invalid configuration{where}:\n  " + "\n  ".join(problems)


def value_problems(config: RunConfig,
                   *more_checks: Callable[[RunConfig], list[str]]) -> list[str]:
    """Values that parse but cannot work; one message per problem, all at once. ``more_checks``:
    the checks of the layers above (``fedlease.configure``: the registries'), run here so that
    every problem is reported in one message."""
    problems = failed(lora_checks(config.lora) + model_checks(config.model)
                      + data_checks(config.data) + train_checks(config.train)
                      + federation_checks(config) + model_loading_checks(config.model)
                      + scale_checks(config) + robustness_checks(config)
                      + privacy_checks(config))
    for check in more_checks:
        problems += check(config)
    return problems


# one range check: (passes, the field, what is expected, its value)
Check = tuple[bool, str, str, object]


def failed(checks: list[Check]) -> list[str]:
    """One message per failed check, in the form every config error takes."""
    return [f"{name} = {value!r}: expected {expected}"
            for ok, name, expected, value in checks if not ok]


def lora_checks(lora: LoRAConfig) -> list[Check]:
    return [
        (lora.rank >= 1, "lora.rank", "an integer >= 1", lora.rank),
        (0 < lora.alpha < math.inf, "lora.alpha", "a number > 0", lora.alpha),
        (0 <= lora.dropout < 1, "lora.dropout", "a number in [0, 1)", lora.dropout),
    ]


def model_checks(model: ModelConfig) -> list[Check]:
    """What the model reads and generates (how it loads: ``model_loading_checks``)."""
    return [
        (model.max_new_tokens >= 1, "model.max_new_tokens", "an integer >= 1",
         model.max_new_tokens),
        (len(model.target_modules) > 0, "model.target_modules", "a non-empty list",
         model.target_modules),
        (model.max_length >= 8, "model.max_length", "an integer >= 8", model.max_length),
    ]


def data_checks(data: DataConfig) -> list[Check]:
    return [
        (len(set(data.tasks)) == len(data.tasks), "data.tasks",
         "each task once (a task's clients are data.clients_per_task)", data.tasks),
        (data.clients_per_task >= 1, "data.clients_per_task", "an integer >= 1",
         data.clients_per_task),
        (data.train_per_client >= 2, "data.train_per_client", "an integer >= 2",
         data.train_per_client),
        (data.test_per_client >= 1, "data.test_per_client", "an integer >= 1",
         data.test_per_client),
    ]


def train_checks(train: TrainConfig) -> list[Check]:
    return [
        (0 < train.lr < math.inf, "train.lr", "a number > 0", train.lr),
        (0 <= train.weight_decay < math.inf, "train.weight_decay", "a number >= 0",
         train.weight_decay),
        (train.batch_size >= 1, "train.batch_size", "an integer >= 1", train.batch_size),
        (train.local_epochs >= 1, "train.local_epochs", "an integer >= 1", train.local_epochs),
        (train.device in ("cpu", "cuda") or train.device.startswith("cuda:"), "train.device",
         "cpu or cuda", train.device),
        (train.precision in PRECISIONS, "train.precision", "one of " + ", ".join(PRECISIONS),
         train.precision),
    ]


def federation_checks(config: RunConfig) -> list[Check]:
    """The rounds and the server's settings, and where the run writes."""
    federation, output = config.federation, config.output
    return [
        (federation.rounds >= 1, "federation.rounds", "an integer >= 1", federation.rounds),
        (0 <= federation.seed <= MAX_SEED, "federation.seed",
         f"an integer in [0, {MAX_SEED}]", federation.seed),
        (federation.max_experts >= 1, "federation.max_experts", "an integer >= 1",
         federation.max_experts),
        (0 <= federation.embedding_noise < math.inf, "federation.embedding_noise",
         "a number >= 0", federation.embedding_noise),
        (federation.exact_allocation_clients >= 2, "federation.exact_allocation_clients",
         "an integer >= 2", federation.exact_allocation_clients),
        (0 < federation.fraction_evaluate <= 1, "federation.fraction_evaluate",
         "a number in (0, 1]", federation.fraction_evaluate),
        (federation.max_update_norm > 0, "federation.max_update_norm",
         "a number > 0 (inf: no bound)", federation.max_update_norm),
        (bool(output.dir), "output.dir", "a folder path", output.dir),
        (not output.tensorboard or importlib.util.find_spec("tensorboard") is not None,
         "output.tensorboard", "false, or the tensorboard package installed (pip install "
         "'fedlease[tensorboard]')", output.tensorboard),
    ]


def privacy_checks(config: RunConfig) -> list[Check]:
    """The ``[privacy]`` section's ranges, and what DP-SGD cannot combine with."""
    privacy = config.privacy
    checks = [
        (privacy.epsilon > 0, "privacy.epsilon", "a number > 0 (inf: no privacy)",
         privacy.epsilon),
        (privacy.delta == 0 or 0 < privacy.delta < 1, "privacy.delta",
         "a number in (0, 1) (0: below 1/n of each client's training set)", privacy.delta),
        (0 < privacy.max_grad_norm < math.inf, "privacy.max_grad_norm", "a number > 0",
         privacy.max_grad_norm),
        (0 < privacy.embedding_share < 1, "privacy.embedding_share",
         "a number in (0, 1)", privacy.embedding_share),
        (0 <= privacy.noise_multiplier < math.inf, "privacy.noise_multiplier",
         "a number >= 0 (0: calibrated to epsilon)", privacy.noise_multiplier),
    ]
    if privacy.enabled:
        checks += [
            (config.federation.embedding_noise == 0, "federation.embedding_noise",
             "0 with [privacy] on (the allocation vector's noise is then calibrated to "
             "privacy.embedding_share of epsilon)", config.federation.embedding_noise),
            (config.train.precision != "fp16", "train.precision",
             "auto, fp32 or bf16 with [privacy] on (DP-SGD takes no fp16 loss scaling)",
             config.train.precision),
            (config.federation.algorithm != "ifca-lora", "federation.algorithm",
             "another algorithm with [privacy] on (IFCA picks each client's cluster by its "
             "noiseless training loss, which no epsilon counts)", config.federation.algorithm),
            (config.model.quantization == "none", "model.quantization",
             "none with [privacy] on (per-example gradients cannot go through bitsandbytes' "
             "quantized layers)", config.model.quantization),
            (not config.train.gradient_checkpointing, "train.gradient_checkpointing",
             "false with [privacy] on (the recomputed forward would be counted twice by the "
             "per-example gradient hooks)", config.train.gradient_checkpointing),
        ]
    return checks


def model_loading_checks(model: ModelConfig) -> list[Check]:
    """How the base model is loaded (quantization, a hub id's revision)."""
    return [
        (not model.revision or (bool(model.path)
                                and not Path(model.path).expanduser().is_dir()),
         "model.revision", "\"\" unless model.path is a hub id (a local folder has no "
         "revisions)", model.revision),
    ]


def scale_checks(config: RunConfig) -> list[Check]:
    """Client sampling and label skew: ranges (their fit to the data source is
    ``DataSource.config_problems``; a source whose client count depends on its files is
    checked against ``clients_per_round`` once they are read, ``federation.sampling``)."""
    per_round, skew = config.federation.clients_per_round, config.data.label_skew
    return [
        (per_round >= 0, "federation.clients_per_round",
         "an integer >= 0 (0: all clients every round)", per_round),
        (config.federation.evaluate_every >= 1, "federation.evaluate_every",
         "an integer >= 1 (1: every round)", config.federation.evaluate_every),
        (config.federation.evaluate_every == 1 or not config.privacy.enabled,
         "federation.evaluate_every", "1 under [privacy] (a private run may stop before its "
         "last round, and its last round must be evaluated)", config.federation.evaluate_every),
        (0 <= skew < math.inf, "data.label_skew", "a number >= 0 (0: balanced)", skew),
        (config.federation.newcomer_steps >= 0, "federation.newcomer_steps",
         "an integer >= 0", config.federation.newcomer_steps),
    ]


def robustness_checks(config: RunConfig) -> list[Check]:
    """The aggregation rule and the attack harness's settings (the attackers' names are
    checked against the clients once the data has loaded, ``fedlease.attacks``)."""
    federation, attack = config.federation, config.attack
    return [
        (0 <= federation.trim_fraction < 0.5, "federation.trim_fraction",
         "a number in [0, 0.5): the fraction trimmed at each end must leave a client",
         federation.trim_fraction),
        (len(set(attack.clients)) == len(attack.clients), "attack.clients",
         "each client once", attack.clients),
        (1 <= attack.scale < math.inf, "attack.scale", "a number >= 1", attack.scale),
        (attack.target not in attack.clients, "attack.target",
         "an honest client (not one of attack.clients)", attack.target),
    ]


def _build(cls, values: dict, where: str, problems: list[str]):
    """Construct dataclass ``cls`` from a TOML table; an unknown key or a value of the wrong type
    is appended to ``problems`` and left at its default, so that every problem is found."""
    if not isinstance(values, dict):
        problems.append(f"[{where}] must be a table, got {type(values).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    place = f"[{where}]" if where else "the top level"
    for key in sorted(set(values) - known):
        problems.append(f"unknown key(s) {[key]} in {place}{did_you_mean(key, known)}; "
                        f"expected some of {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        if name not in known:
            continue
        hint = hints[name]
        label = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, label, problems)
            continue
        try:
            kwargs[name] = _check_type(value, hint, label, problems)
        except ConfigError as err:
            problems.append(str(err))
    return cls(**kwargs)


def _check_type(value, hint, label: str, problems: list[str]):
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if dataclasses.is_dataclass(item):  # an array of tables, e.g. [[data.datasets]]
            if not isinstance(value, list):
                raise ConfigError(f"{label} = {value!r}: expected a list of tables "
                                  f"([[{label}]])")
            return [_build(item, v, f"{label}[{i}]", problems) for i, v in enumerate(value)]
        if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
            raise ConfigError(f"{label} = {value!r}: expected a list of {item.__name__}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{label} = {value!r}: expected {hint.__name__}")
    return value


def parse_setting(text: str, where: str = "--set") -> tuple[str, str, object]:
    """``SECTION.KEY=VALUE`` (``--set``, a compare variant's ``+KEY=VALUE``) as (section, key,
    value): VALUE is TOML, a bare word is a string; a key without a section is under
    ``[federation]``. Whether the key exists is checked with the rest of the config."""
    key, sep, value_text = text.partition("=")
    section, _, name = key.strip().rpartition(".")
    if not sep or not name or not value_text:
        raise ConfigError(f"{where} {text!r}: expected SECTION.KEY=VALUE, e.g. "
                          "federation.rounds=3 or train.lr=1e-3")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text  # a bare word: a string
    return section or "federation", name, value


def read_toml(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """The TOML file's tables (none without ``path``), then ``overrides`` (``{"section":
    {"key": value}}``) over them; not yet type-checked (``build_config``)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            # the bytes as written (no newline translation): TOML as the spec reads it
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
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
    return data


def set_defaults(data: dict, defaults: dict[str, dict]) -> None:
    """Fill ``defaults`` (``{"section": {"key": value}}``) into ``data`` (``read_toml``'s)
    where it gives no value: a value of the file or of an override wins."""
    for section, values in defaults.items():
        table = data.setdefault(section, {})
        if isinstance(table, dict):  # a non-table is reported by build_config
            for key, value in values.items():
                table.setdefault(key, value)


def build_config(data: dict, path: str | Path | None = None) -> RunConfig:
    """The ``RunConfig`` of ``data`` (``read_toml``'s), every key known and of its type;
    ``path``: the file it came from, named in the error."""
    config, problems = collect_config(data)
    if problems:
        raise ConfigError(problems_message(problems, path))
    return config


def collect_config(data: dict) -> tuple[RunConfig, list[str]]:
    """The ``RunConfig`` of ``data`` with every unknown key and mistyped value left at its
    default, and one message per such problem (so range checks can still run on the rest)."""
    problems: list[str] = []
    return _build(RunConfig, data, "", problems), problems


def overridden(config: RunConfig, overrides: dict) -> dict:
    """``config`` as ``read_toml`` data with ``overrides`` (``{"section": {"key": value}}``)
    over it."""
    data = config_to_dict(config)
    for section, values in overrides.items():
        if not isinstance(data.get(section), dict):
            raise ConfigError(f"unknown section [{section}]; expected one of {sorted(data)}")
        data[section].update(values)
    return data


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
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table (an item of [[data.datasets]])
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)
