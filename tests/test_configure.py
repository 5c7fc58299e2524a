"""fedlease.configure: the registries' checks on top of the config layer."""

import pytest

from fedlease.configure import load_config
from fedlease.errors import ConfigError


def test_an_algorithm_brings_its_own_config_checks(monkeypatch):
    """A registry entry's ``config_problems`` runs with the other checks, one message for all."""
    from fedlease.algorithms import ALGORITHMS
    from fedlease.algorithms.fedit import FedIT

    class EvenRounds(FedIT):
        name = "even-rounds"

        @classmethod
        def config_problems(cls, config):
            rounds = config.federation.rounds
            return [] if rounds % 2 == 0 else [f"federation.rounds = {rounds}: expected even"]

    # registered for this test only (a Registry has no removal: undone by monkeypatch)
    monkeypatch.setitem(ALGORITHMS._entries, EvenRounds.name, EvenRounds)
    assert load_config(overrides={"federation": {"algorithm": "even-rounds", "rounds": 4}})
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"federation": {"algorithm": "even-rounds", "rounds": 3},
                               "lora": {"rank": 0}})
    assert "lora.rank = 0: expected an integer >= 1" in str(err.value)
    assert "federation.rounds = 3: expected even" in str(err.value)


def test_the_config_layer_alone_checks_ranges_but_no_names():
    """``fedlease.config`` reads and type-checks only; the names are ``fedlease.configure``'s."""
    from fedlease.config import build_config, read_toml
    from fedlease.config.loading import validate as check_values

    config = build_config(read_toml(overrides={"federation": {"algorithm": "nope"}}))
    assert check_values(config) is config
    with pytest.raises(ConfigError, match="federation.algorithm = 'nope': expected one of"):
        load_config(overrides={"federation": {"algorithm": "nope"}})
