"""The output folder: nothing written before the run is checked, a folder holding a run is
refused unless resumed or overwritten, overwriting leaves nothing of the old run, files follow
the umask, and the free-space estimate is close to what a run writes."""

import json
import os
import stat

import pytest

from fedlease import cli
from fedlease.config import dump_toml
from fedlease.errors import ConfigError
from fedlease.reporting import files, outputs
from fedlease.tasks.loading import load_base_model, load_clients
from fedlease.transports.simulator import run_bytes, run_simulation


def run_cli(config, tmp_path, capsys, *extra):
    path = tmp_path / "run.toml"
    path.write_text(dump_toml(config))
    code = cli.main(["run", "--config", str(path), "--quiet", *extra])
    return code, capsys.readouterr().err


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_old_run(folder):
    """A folder as an earlier (interrupted FedLEASE) run left it, and a file of the user's."""
    for name in ("plots", "adapters", "checkpoint"):
        (folder / name).mkdir(parents=True)
    (folder / "config.toml").write_text("[federation]\nrounds = 99\n")
    (folder / "metrics.json").write_text('{"old": true}')
    (folder / "clustering.json").write_text('{"old": true}')
    (folder / "result.json").write_text('{"old": true}')
    (folder / ".metrics.json.abc123.tmp").write_text("half")
    (folder / "plots" / "dendrogram.png").write_bytes(b"old")
    (folder / "adapters" / "gone-client.safetensors").write_bytes(b"old")
    (folder / "checkpoint" / "checkpoint.json").write_text("{}")
    (folder / outputs.ERROR_LOG).write_text("Traceback of the old run")
    (folder / "my-notes.txt").write_text("not fedlease's")
    return snapshot(folder)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        files.atomic_write(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_a_run_writes_nothing_before_data_and_model_are_checked(tiny_config, tmp_path, capsys):
    tiny_config.data.path = str(tmp_path / "mistyped")
    code, err = run_cli(tiny_config, tmp_path, capsys)
    assert code == 2 and "mistyped" in err
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_a_run_is_refused(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    before = fake_old_run(out)
    code, err = run_cli(tiny_config, tmp_path, capsys)
    assert code == 2 and "Traceback" not in err
    assert (f"the output folder {out} holds another run (config.toml, metrics.json, checkpoint); "
            f"resume it with `fedlease run --resume {out}`") in err
    assert "--overwrite" in err
    assert snapshot(out) == before


def test_a_failed_start_leaves_the_run_folder_untouched(tiny_config, tmp_path, capsys):
    """--overwrite with a mistyped data path, and a resume whose data is gone: the interrupted
    run in the folder stays as it was (and stays resumable)."""
    out = tmp_path / "out"
    before = fake_old_run(out)
    good_data = tiny_config.data.path
    tiny_config.data.path = str(tmp_path / "mistyped")
    code, err = run_cli(tiny_config, tmp_path, capsys, "--overwrite")
    assert code == 2 and snapshot(out) == before

    tiny_config.data.path = good_data
    tiny_config.federation.rounds = 2
    resumable = tmp_path / "resumable"
    tiny_config.output.dir = str(resumable)
    run_simulation(tiny_config, resumable, progress=False)
    (resumable / "summary.txt").unlink()  # as if killed before the end
    before = snapshot(resumable)
    os.rename(good_data, good_data + "-moved")
    try:
        assert cli.main(["run", "--resume", str(resumable), "--quiet"]) == 2
    finally:
        os.rename(good_data + "-moved", good_data)
    assert snapshot(resumable) == before


def test_overwrite_replaces_every_output_of_the_old_run(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    fake_old_run(out)
    tiny_config.federation.algorithm = "fedit"  # writes no clustering.json
    tiny_config.federation.rounds = 1
    code, err = run_cli(tiny_config, tmp_path, capsys, "--overwrite")
    assert code == 0, err
    assert not (out / "clustering.json").exists() and not (out / "result.json").exists()
    assert not (out / "plots" / "dendrogram.png").exists()
    assert not (out / "adapters" / "gone-client.safetensors").exists()
    assert not (out / outputs.ERROR_LOG).exists()
    assert not list(out.glob(".*.tmp"))
    assert (out / "my-notes.txt").read_text() == "not fedlease's"
    assert json.loads((out / "metrics.json").read_text())["algorithm"] == "fedit"
    assert "rounds = 1" in (out / "config.toml").read_text()


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    assert cli.main(["run", "--resume", str(tmp_path), "--overwrite"]) == 2
    assert "drop --overwrite" in capsys.readouterr().err


def test_checking_the_folder_writes_nothing(tmp_path):
    writer = outputs.RunWriter(tmp_path / "a" / "b")
    writer.check()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(outputs.OutputError, match="is a file, not a folder"):
        outputs.RunWriter(tmp_path / "file" / "sub").check()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds another run \(metrics.json\)"):
        outputs.RunWriter(tmp_path / "run").check()
    outputs.RunWriter(tmp_path / "run", resume=True).check()
    outputs.RunWriter(tmp_path / "run", overwrite=True).check()


def folder_bytes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("algorithm", ["fedlease", "fedit"])
def test_space_estimate_is_close_to_what_a_run_writes(tiny_config, tmp_path, algorithm):
    """The estimate covers the run's peak (two checkpoints while one replaces the other, plus
    everything else) and is within a few times of it, not an order of magnitude above. The tiny
    model's states are a few KiB, so the reports dominate here."""
    tiny_config.federation.algorithm = algorithm
    tiny_config.federation.rounds = 2
    out = tmp_path / "run"
    run_simulation(tiny_config, out, progress=False)
    checkpoint = folder_bytes(out / "checkpoint")
    peak = folder_bytes(out) + checkpoint  # the old checkpoint beside the new one
    clients = load_clients(tiny_config)
    model, tokenizer = load_base_model(tiny_config)
    from fedlease.algorithms import ALGORITHMS, ClientInfo
    from fedlease.tasks.loading import client_trainer

    trainers = {c.client_id: client_trainer(tiny_config, model, tokenizer, c) for c in clients}
    algorithm_obj = ALGORITHMS[algorithm](tiny_config, [ClientInfo(c.client_id, len(c.train))
                                                        for c in clients],
                                          model.adapter_shapes())
    estimate = run_bytes(tiny_config, algorithm_obj, trainers)
    assert peak <= estimate <= 4 * peak, (peak, estimate)


def test_summary_stays_aligned_with_long_task_names():
    from types import SimpleNamespace

    from fedlease.reporting.summary import summary_table

    tasks = {"a-very-long-client-name-0": "a-task-name-of-30-characters--",
             "b-1": "short"}
    result = SimpleNamespace(
        final={cid: {"accuracy": 0.5} for cid in tasks}, report={}, columns=("accuracy",),
        tasks=tasks, metric="accuracy", wall_seconds=1.0,
        history=[{"clients": {}, "traffic": {"download": 10, "upload": 4,
                                             "clients": {"b-1": [10, 4]}}}])
    lines = summary_table(result).splitlines()
    rows = [line for line in lines[:3]]
    assert len({len(line) for line in rows}) == 1  # header and clients: one width
    assert len({line.index("0.500") for line in lines if "0.500" in line}) == 1
    assert "downloaded MB per client" in summary_table(result)
