"""The one registry pattern: entries by name in registration order, an unknown name's error
listing the registered ones, and every name a config gives checked against its registry."""

import pytest

from fedlease.config import RunConfig
from fedlease.configure import with_overrides
from fedlease.errors import ConfigError
from fedlease.registry import Registry, UnknownName


def test_entries_in_registration_order_and_unknown_names_listed():
    colors = Registry("paint.color", {"red": 1})
    assert colors.registers("blue")(2) == 2
    assert list(colors) == ["red", "blue"] and colors["blue"] == 2 and "red" in colors
    assert colors.get("green") is None and colors.problem("red") is None
    with pytest.raises(UnknownName, match=r"^paint.color = 'green': expected one of red, blue$"):
        colors["green"]
    assert colors.problem("green", "paints[0].color") == (
        "paints[0].color = 'green': expected one of red, blue")


def test_a_name_registered_twice_is_refused():
    colors = Registry("paint.color", {"red": 1})
    with pytest.raises(ValueError, match="'red' is registered twice"):
        colors.register("red", 2)


@pytest.mark.parametrize("section, key, registered", [
    ("model", "task", "classification"), ("model", "quantization", "4bit"),
    ("data", "source", "glue"), ("federation", "allocation", "hybrid"),
    ("federation", "algorithm", "fedit"), ("federation", "aggregation", "median"),
    ("privacy", "accountant", "prv"), ("attack", "kind", "label-flip"),
])
def test_every_configured_name_is_checked_against_its_registry(section, key, registered):
    with pytest.raises(ConfigError, match=rf"{section}.{key} = 'nope': expected one of .*"
                                          rf"\b{registered}\b"):
        with_overrides(RunConfig(), {section: {key: "nope"}})
