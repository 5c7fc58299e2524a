"""Bad input reaches the user as one clear line and an exit code, never as a traceback, and
before any training."""

import json
from pathlib import Path

import pytest
import torch

from fedlease import cli, configure
from fedlease.config import dump_toml
from fedlease.reporting import outputs
from fedlease.transports import simulator


def run_cli(config, tmp_path, capsys, *extra):
    path = tmp_path / "run.toml"
    path.write_text(dump_toml(config))
    code = cli.main(["run", "--config", str(path), "--quiet", *extra])
    return code, capsys.readouterr().err


def test_target_modules_matching_nothing_is_a_config_error(tiny_config, tmp_path, capsys):
    tiny_config.model.target_modules = ["q_proj"]
    code, err = run_cli(tiny_config, tmp_path, capsys)
    assert code == 2
    assert "model.target_modules = ['q_proj']: match no nn.Linear" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_unloadable_model_path_is_a_config_error(tiny_config, tmp_path, capsys):
    tiny_config.model.path = str(tmp_path / "no-model")
    code, err = run_cli(tiny_config, tmp_path, capsys)
    assert code == 2 and "model.path = " in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_device_without_gpu_is_a_config_error(tiny_config, tmp_path, capsys):
    code, err = run_cli(tiny_config, tmp_path, capsys, "--device", "cuda")
    assert code == 2 and "train.device = 'cuda': this machine has no CUDA device" in err


def test_unwritable_output_folder_is_named(tiny_config, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run_cli(tiny_config, tmp_path, capsys, "--out", str(blocker / "sub"))
    assert code == 1 and f"cannot write to the output folder {blocker / 'sub'}" in err


def test_too_little_disk_space_fails_before_training(tiny_config, tmp_path, capsys,
                                                     monkeypatch):
    real = outputs.shutil.disk_usage
    monkeypatch.setattr(outputs.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=100 * 2**10))
    code, err = run_cli(tiny_config, tmp_path, capsys)
    assert code == 1
    assert "has 0.1 MiB free; this run writes about" in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_space_estimate_counts_two_checkpoints_and_the_reports():
    assert outputs.estimate_run_bytes(1000, 3000, num_clients=4, rounds=5) == int(
        outputs.SPACE_SAFETY_FACTOR * (2 * (4 * 1000 + 3000) + outputs.REPORT_BYTES
                                       + 4 * (outputs.CLIENT_REPORT_BYTES
                                              + outputs.HISTORY_BYTES * 5)))


def test_resume_without_checkpoint_is_named(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.toml").write_text(dump_toml(tiny_config))
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


# -- failures that used to come after the training time was spent ----------------------------

def test_a_one_client_federation_is_refused_before_anything_runs(tiny_config, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    fed = tiny_config.data.path
    (one / "colors-0.jsonl").write_bytes((tmp_path / "fed" / "colors-0.jsonl").read_bytes())
    assert fed == str(tmp_path / "fed")
    tiny_config.data.path = str(one)
    code, err = run_cli(tiny_config, tmp_path, capsys)
    assert code == 2 and "Traceback" not in err
    assert (f"data.source = 'jsonl' (data.path = '{one}') gives 1 client ('colors-0'); a "
            "federation needs at least 2 clients") in err
    assert not (tmp_path / "out").exists()


def test_max_length_above_the_models_positions_is_refused(tiny_config, tmp_path, capsys):
    tiny_config.model.max_length = 100  # the tiny BERT has 64 positions
    code, err = run_cli(tiny_config, tmp_path, capsys)
    assert code == 2
    assert "model.max_length = 100: expected at most 64, the number of positions the model" in err
    assert not (tmp_path / "out").exists()


def test_generation_lengths_are_checked_against_the_models_positions(tiny_generation_config,
                                                                     tmp_path, capsys):
    tiny_generation_config.model.max_length = 126  # the tiny LLaMA has 128 positions
    code, err = run_cli(tiny_generation_config, tmp_path, capsys)
    assert code == 2
    assert "model.max_length + model.max_new_tokens = 129" in err


def test_a_prompt_longer_than_max_length_is_a_config_error(tiny_generation_config, tmp_path,
                                                           capsys):
    tiny_generation_config.model.max_length = 8
    code, err = run_cli(tiny_generation_config, tmp_path, capsys)
    assert code == 2 and "model.max_length = 8 tokens leaves no room" in err


def test_every_upload_rejected_is_a_clean_error_keeping_the_finished_rounds(tiny_config, tmp_path,
                                                                           capsys):
    """Warm-up round 1 uploads nothing; at the allocation round 2 every LoRA breaks the bound:
    one clear line, and round 1's metrics and checkpoint stay (exit 2, no traceback)."""
    tiny_config.federation.allocation = "lora-b"
    tiny_config.federation.rounds = 3
    tiny_config.federation.warmup_rounds = 2
    tiny_config.federation.max_update_norm = 1e-6
    code, err = run_cli(tiny_config, tmp_path, capsys)
    out = tmp_path / "out"
    assert code == 2 and "Traceback" not in err
    assert "round 2: the server rejected every client upload, nothing to aggregate" in err
    assert "exceeds federation.max_update_norm = 1e-06" in err
    assert f"the metrics and checkpoint of round 1 are kept in {out}" in err
    assert [r["round"] for r in json.loads((out / "metrics.json").read_text())["rounds"]] == [1]
    assert json.loads((out / "checkpoint" / "checkpoint.json").read_text())["round"] == 1


@pytest.mark.parametrize("argv,message", [
    (["--seed", "-1"], "federation.seed = -1"),
    (["--seed", str(2**64)], "federation.seed = 18446744073709551616"),
])
def test_out_of_range_seed_is_named(tiny_config, tmp_path, capsys, argv, message):
    code, err = run_cli(tiny_config, tmp_path, capsys, *argv)
    assert code == 2 and message in err


def test_config_path_that_is_a_folder_or_not_utf8(tmp_path, capsys):
    assert cli.main(["run", "--config", str(tmp_path)]) == 2
    assert f"config file {tmp_path} is a folder" in capsys.readouterr().err
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[output]\ndir = "caf\xe9"\n')
    assert cli.main(["run", "--config", str(latin)]) == 2
    assert "latin.toml is not UTF-8 text" in capsys.readouterr().err


def failing_run(error):
    """A run_simulation that has made the output folder, then fails."""
    def run(config, out, **kwargs):
        Path(out).mkdir(parents=True, exist_ok=True)
        raise error
    return run


def test_unforeseen_error_is_one_line_with_the_traceback_in_the_output_folder(
        tiny_config, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(simulator, "run_simulation",
                        failing_run(RuntimeError("shape mismatch\nsecond line")))
    code, err = run_cli(tiny_config, tmp_path, capsys)
    log = Path(tiny_config.output.dir) / outputs.ERROR_LOG
    assert code == 1
    assert err.splitlines()[-1] == (f"fedlease: error: RuntimeError: shape mismatch (traceback "
                                    f"in {log}; --debug prints it)")
    assert "Traceback" not in err
    assert "Traceback" in log.read_text() and "second line" in log.read_text()


def test_missing_optional_package_names_what_to_install(tiny_config, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.setattr(simulator, "run_simulation", failing_run(
        ModuleNotFoundError("No module named 'flwr.app'", name="flwr.app")))
    code, err = run_cli(tiny_config, tmp_path, capsys)
    assert code == 1
    assert "fedlease: error: missing package 'flwr': pip install -e \".[flower]\"" in err


def test_error_before_an_output_folder_exists_logs_to_the_temp_folder(tmp_path, capsys,
                                                                      monkeypatch):
    def load_config(*args):
        raise KeyError("model")

    monkeypatch.setattr(configure, "load_config", load_config)
    monkeypatch.setattr(cli.tempfile, "tempdir", str(tmp_path))
    assert cli.main(["run", "--quiet"]) == 1
    err = capsys.readouterr().err
    [log] = tmp_path.glob("fedlease-error-*.log")
    assert f"KeyError: 'model' (traceback in {log};" in err
    assert log.read_text().startswith("fedlease run --quiet\nTraceback")


@pytest.mark.parametrize("where", [["--debug", "run"], ["run", "--debug"]])
def test_debug_shows_the_traceback(tiny_config, tmp_path, monkeypatch, where):
    monkeypatch.setattr(simulator, "run_simulation", failing_run(RuntimeError("boom")))
    path = tmp_path / "run.toml"
    path.write_text(dump_toml(tiny_config))
    with pytest.raises(RuntimeError, match="boom"):  # Python prints it, exit status 1
        cli.main([*where, "--config", str(path), "--quiet"])
