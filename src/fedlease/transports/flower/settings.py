"""The Flower run config (``[tool.flwr.app.config]``, ``flwr run --run-config``) read into the
library's ``RunConfig`` plus the options of the Flower runner itself.

Flower's run config is flat (strings, numbers, booleans), so the library config travels as a
TOML file path (``config``) plus one TOML inline table of overrides (``overrides``, e.g.
``"{federation.rounds = 5, train.lr = 0.01}"``); both server and clients read the same.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from fedlease.config import RunConfig
from fedlease.configure import load_config
from fedlease.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class FlowerSettings:
    # share of the federation's clients that train each round: federation.clients_per_round
    # given as a share (server_app.with_fraction_train); 1 = that setting decides
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0  # share of the trained clients evaluated each round
    min_train_clients: int = 1  # train at least this many each round (if available)
    min_available_clients: int = 2  # wait for this many nodes before the run starts
    connect_timeout: float = 300.0  # seconds to wait for them
    round_timeout: float = 600.0  # seconds to wait for the replies of one exchange
    resume: bool = False  # continue the run checkpointed in output.dir (after a server crash)


# run-config key -> FlowerSettings field
SETTING_KEYS = {
    "fraction-train": "fraction_train",
    "fraction-evaluate": "fraction_evaluate",
    "min-train-clients": "min_train_clients",
    "min-available-clients": "min_available_clients",
    "connect-timeout": "connect_timeout",
    "round-timeout": "round_timeout",
}


def parse_overrides(text: str) -> dict:
    """``"{federation.rounds = 5}"`` -> ``{"federation": {"rounds": 5}}``."""
    if not text.strip():
        return {}
    try:
        overrides = tomllib.loads(f"overrides = {text}")["overrides"]
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"run config overrides = {text!r}: expected a TOML inline table such "
                          f"as \"{{federation.rounds = 5}}\" ({err})") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"run config overrides = {text!r}: expected a TOML inline table such "
                          "as \"{federation.rounds = 5}\"")
    return overrides


def read_run_config(run_config: dict) -> tuple[RunConfig, FlowerSettings]:
    config = load_config(run_config.get("config") or None,
                         parse_overrides(str(run_config.get("overrides", ""))))
    values = {}
    for key, name in SETTING_KEYS.items():
        if key in run_config:
            default = getattr(FlowerSettings, name)
            value = run_config[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"run config {key} = {value!r}: expected a number")
            values[name] = type(default)(value)
    if "resume" in run_config:
        if not isinstance(run_config["resume"], bool):
            raise ConfigError(f"run config resume = {run_config['resume']!r}: expected true or "
                              "false")
        values["resume"] = run_config["resume"]
    settings = FlowerSettings(**values)
    problems = []
    for key in ("fraction-train", "fraction-evaluate"):
        value = getattr(settings, SETTING_KEYS[key])
        if not 0 < value <= 1:
            problems.append(f"{key} = {value!r}: expected a number in (0, 1]")
    for key in ("min-train-clients", "min-available-clients"):
        if getattr(settings, SETTING_KEYS[key]) < 1:
            problems.append(f"{key} = {getattr(settings, SETTING_KEYS[key])!r}: expected >= 1")
    for key in ("connect-timeout", "round-timeout"):
        if getattr(settings, SETTING_KEYS[key]) <= 0:
            problems.append(f"{key} = {getattr(settings, SETTING_KEYS[key])!r}: expected > 0")
    if settings.fraction_train < 1 and config.federation.clients_per_round:
        problems.append(f"fraction-train = {settings.fraction_train!r} and "
                        f"federation.clients_per_round = {config.federation.clients_per_round}"
                        ": both set how many clients train per round; keep one")
    if problems:
        raise ConfigError("invalid Flower run config:\n  " + "\n  ".join(problems))
    return config, settings
