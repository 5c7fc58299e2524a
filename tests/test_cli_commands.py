"""The commands around a run: --version, list, config init / check, --set, --json, the seeds of
compare, the per-command Ctrl-C hint and the help text."""

import json
import subprocess
import sys

import pytest

from fedlease import __version__
from fedlease.cli import build_parser, main
from fedlease.config.reference import schema_reference
from fedlease.configure import load_config

from .test_cli import write_config


def test_version_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"fedlease {__version__}"
    shown = subprocess.run([sys.executable, "-m", "fedlease", "--version"], capture_output=True,
                           text=True, check=True).stdout
    assert shown.strip() == f"fedlease {__version__}"


def test_help_has_exit_codes_and_no_rst_markup():
    parser = build_parser()
    for text in [parser.format_help()] + [p.format_help() for p in
                                          parser._subparsers._group_actions[0].choices.values()]:
        assert "``" not in text
        assert "exit codes:" in text and "130" in text


@pytest.mark.parametrize("what,expected", [
    ("algorithms", ["fedlease", "fedit", "ifca-lora"]), ("tasks", ["classification", "generation"]),
    ("sources", ["builtin", "jsonl", "datasets"]), ("partitioners", ["iid", "dirichlet"]),
    ("signals", ["embedding", "lora-b", "hybrid"]), ("aggregations", ["mean", "trimmed-mean"]),
])
def test_list_names_every_entry(capsys, what, expected):
    assert main(["list", what]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert set(expected) <= set(names)


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_config_init_writes_a_template_that_loads_as_the_task_defaults(tmp_path, capsys, task):
    path = tmp_path / "my.toml"
    assert main(["config", "init", str(path), "--task", task]) == 0
    text = path.read_text()
    assert load_config(path) == load_config(overrides={"model": {"task": task}})
    for key in schema_reference():  # every key, under its meaning
        assert f"{key.key} = " in text and key.meaning.split()[0] in text
    assert main(["config", "init", str(path)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_config_check_reports_every_problem_at_once_with_did_you_mean(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[lora]\nrnak = 4\n[federation]\nalgorithm = "fedlese"\nmax_experts = 0\n'
                    '[train]\nlr = "fast"\n')
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    for problem in ("['rnak'] in [lora] (did you mean 'rank'?)", "train.lr = 'fast'",
                    "federation.max_experts = 0", "(did you mean 'fedlease'?)"):
        assert problem in err


def test_config_check_loads_the_data_and_estimates_memory_without_training(
        tiny_model_dir, tiny_federation, tmp_path, capsys):
    path = write_config(tmp_path, {
        "model": {"path": str(tiny_model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": str(tiny_federation)},
        "output": {"dir": str(tmp_path / "out")},
    })
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "data: 4 clients (" in out and "colors: 2" in out and "animals: 2" in out
    assert "estimated peak memory" in out
    assert not (tmp_path / "out").exists()
    assert main(["config", "check", str(path), "--data-path", str(tmp_path / "none")]) == 2


def test_set_overrides_any_key_with_the_variant_syntax(tiny_model_dir, tiny_federation, tmp_path,
                                                       capsys):
    path = write_config(tmp_path, {
        "model": {"path": str(tiny_model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": str(tiny_federation)},
    })
    out = tmp_path / "out"
    assert main(["run", "--config", str(path), "--out", str(out), "--quiet", "--json",
                 "--set", "federation.rounds=2", "--set", "warmup_rounds=1",
                 "--set", "train.lr=1e-3", "--set", "algorithm=fedit"]) == 0
    summary = json.loads(capsys.readouterr().out)  # stdout holds only the JSON object
    saved = load_config(out / "config.toml")
    assert (saved.federation.rounds, saved.federation.warmup_rounds, saved.train.lr,
            saved.federation.algorithm) == (2, 1, 1e-3, "fedit")
    assert summary["algorithm"] == "fedit" and summary["rounds"] == 2
    assert set(summary["clients"]) == {"colors-0", "colors-1", "animals-0", "animals-1"}
    assert 0 <= summary["means"]["accuracy"]["overall"] <= 1
    assert main(["run", "--config", str(path), "--set", "federation.rouns=2"]) == 2
    assert "did you mean 'rounds'" in capsys.readouterr().err
    assert main(["run", "--set", "rounds"]) == 2
    assert "expected SECTION.KEY=VALUE" in capsys.readouterr().err


def test_compare_seed_and_num_seeds_and_the_deprecated_seeds(tiny_model_dir, tiny_federation,
                                                             tmp_path, capsys):
    path = write_config(tmp_path, {
        "model": {"path": str(tiny_model_dir), "max_length": 16},
        "data": {"source": "jsonl", "path": str(tiny_federation)},
        "federation": {"rounds": 1, "warmup_rounds": 0},
    })
    out = tmp_path / "compare"
    common = ["compare", "--config", str(path), "--algorithms", "local", "--out", str(out),
              "--quiet"]
    assert main(common + ["--seed", "5", "--num-seeds", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seeds"] == [5, 6] and result["rows"][0]["algorithm"] == "local"
    assert sorted(p.name for p in (out / "local").iterdir()) == ["seed-5", "seed-6"]
    assert main(common + ["--seed", "5", "--seeds", "1"]) == 0  # reuses seed 5
    assert "--seeds N is deprecated: use --num-seeds N" in capsys.readouterr().err


@pytest.mark.parametrize("argv,hint", [
    (["run", "--out", "runs/x"], "fedlease run --resume runs/x"),
    (["compare", "--out", "runs/c"], "run the same command again"),
    (["predict", "r", "--client", "c", "--split", "test"], "nothing to resume"),
    (["export", "r", "--client", "c", "--format", "peft", "--out", "e"], "run the command again"),
])
def test_ctrl_c_hint_fits_the_command(monkeypatch, capsys, argv, hint):
    def interrupted(args):
        raise KeyboardInterrupt

    parser = build_parser()
    monkeypatch.setattr("fedlease.cli.build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert hint in err
    assert argv[0] == "run" or "--resume" not in err
