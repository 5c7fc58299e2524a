import pytest

from fedlease.config import ConfigError, dump_toml, load_config


def test_defaults_are_valid_and_round_trip(tmp_path):
    config = load_config()
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(config))
    assert load_config(path) == config


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[lora]\nrnak = 4\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rnak'\] in \[lora\]"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nlr = "fast"\n')
    with pytest.raises(ConfigError, match="train.lr = 'fast': expected float"):
        load_config(path)


@pytest.mark.parametrize("section,key,value,field", [
    ("lora", "rank", 0, "lora.rank"),
    ("federation", "max_experts", 0, "federation.max_experts"),
    ("federation", "warmup_rounds", 10, "federation.warmup_rounds"),
    ("federation", "algorithm", "fedsgd", "federation.algorithm"),
    ("data", "source", "csv", "data.source"),
    ("train", "precision", "fp8", "train.precision"),
])
def test_impossible_values_are_named(section, key, value, field):
    with pytest.raises(ConfigError, match=field):
        load_config(overrides={section: {key: value}})


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize("section,key,value,field", [
    ("train", "lr", float("nan"), "train.lr"),
    ("train", "lr", float("inf"), "train.lr"),
    ("lora", "alpha", float("nan"), "lora.alpha"),
    ("federation", "max_update_norm", 0.0, "federation.max_update_norm"),
    ("federation", "max_update_norm", float("nan"), "federation.max_update_norm"),
    ("data", "tasks", [], "data.tasks"),
    ("output", "dir", "", "output.dir"),
])
def test_non_finite_and_empty_values_are_named(section, key, value, field):
    with pytest.raises(ConfigError, match=field):
        load_config(overrides={section: {key: value}})


def test_unbounded_update_norm_is_allowed():
    config = load_config(overrides={"federation": {"max_update_norm": float("inf")}})
    assert config.federation.max_update_norm == float("inf")
