"""Bad input reaches the user as one clear line and an exit code, never as a traceback, and
before any training."""

from pathlib import Path

import pytest
import torch

from fedlease import cli
from fedlease.config import dump_toml
from fedlease.reporting import outputs
from fedlease.runners import simulator


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
                        lambda path: real(path)._replace(free=3 * 2**20))
    code, err = run_cli(tiny_config, tmp_path, capsys)
    assert code == 1
    assert "has 3.0 MiB free; this run writes about" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_space_estimate_counts_checkpoints_adapters_and_reports():
    assert outputs.estimate_run_bytes(1000, num_clients=4, max_experts=2) \
        == 1000 * (3 * 4 + 2 * 2) + outputs.REPORT_BYTES


def test_resume_without_checkpoint_is_named(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.toml").write_text(dump_toml(tiny_config))
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


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
    log = Path(tiny_config.output.dir) / cli.ERROR_LOG
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

    monkeypatch.setattr(cli, "load_config", load_config)
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
