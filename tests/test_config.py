import pytest

from fedlease.config import dump_toml
from fedlease.configure import load_config
from fedlease.errors import ConfigError
from fedlease.tasks import task_of


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


def test_generation_task_has_its_own_defaults_and_metric():
    config = load_config(overrides={"model": {"task": "generation"}})
    assert config.model.target_modules == ["q_proj", "v_proj"]
    assert config.model.max_length == 128
    assert task_of(config).metric == "rouge_l"
    assert task_of(load_config()).metric == "accuracy"
    assert load_config().model.target_modules == ["query", "value"]


def test_file_values_win_over_task_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\ntask = "generation"\ntarget_modules = ["q_proj"]\n')
    config = load_config(path)
    assert config.model.target_modules == ["q_proj"]
    assert load_config(path, {"model": {"max_length": 40}}).model.max_length == 40


@pytest.mark.parametrize("key,value", [("task", "translation"), ("max_new_tokens", 0)])
def test_impossible_generation_values_are_named(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        load_config(overrides={"model": {key: value}})


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


@pytest.mark.parametrize("overrides,message", [
    ({"data": {"path": "my/data"}}, "data.path = 'my/data': expected no path with data.source "
                                    "= 'builtin'"),
    ({"data": {"tasks": ["news", "spam", "news"]}}, "data.tasks = .*: expected each task once"),
    ({"federation": {"seed": -1}}, r"federation.seed = -1: expected an integer in \[0, "),
    ({"federation": {"seed": 2**32}}, "federation.seed = 4294967296"),
])
def test_settings_that_would_be_ignored_or_misread_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_config_path_that_is_a_folder_or_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder"):
        load_config(tmp_path)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[output]\ndir = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="latin.toml is not UTF-8 text"):
        load_config(latin)


def test_a_bare_carriage_return_is_invalid_toml_as_the_spec_reads_it(tmp_path):
    # the file's bytes are parsed as written: no newline translation turns "\r" into "\n"
    path = tmp_path / "cr.toml"
    path.write_bytes(b"[federation]\nrounds = 2\n\r")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    path.write_bytes(b"[federation]\r\nrounds = 4\r\n")  # CRLF line ends are TOML newlines
    assert load_config(path).federation.rounds == 4
