"""Checkpoints: the server state round-trips exactly, a damaged or foreign checkpoint is refused,
and a run killed with SIGKILL resumes to the same final metrics as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedlease import cli
from fedlease.algorithms import ALGORITHMS
from fedlease.config import dump_toml, load_config
from fedlease.reporting import outputs
from fedlease.runners import checkpoint as ckpt
from fedlease.runners.simulator import run_simulation

from ..algorithms.test_validation import honest_replies, make_server


def server_state_after_two_rounds():
    server = make_server()
    for rnd in (1, 2):
        server.aggregate_fit(rnd, honest_replies(server, rnd))
    return server


def saved(tmp_path, server, rnd=2, config=None):
    local = {"c0": {"head.weight": torch.randn(2, 5), "adapter.x.lora_A": torch.randn(1, 4, 6)},
             "c1": {"head.weight": torch.randn(2, 5).t()}}  # a non-contiguous tensor too
    checkpoint = ckpt.Checkpoint(rnd, ckpt.algorithm_state(server), local, [{"round": 1}],
                                 ckpt.rng_state())
    ckpt.save_checkpoint(tmp_path, checkpoint, config or server.config)
    return checkpoint


def test_server_state_round_trips_exactly(tmp_path):
    server = server_state_after_two_rounds()
    before = saved(tmp_path, server)
    after = ckpt.load_checkpoint(tmp_path, server.config)
    fresh = make_server()
    ckpt.restore_algorithm_state(fresh, after.server_state)
    assert fresh.cluster_of == server.cluster_of and fresh.clustered == server.clustered
    assert fresh.clustering.labels == server.clustering.labels
    assert fresh.clustering.silhouette == server.clustering.silhouette  # int keys kept
    assert (fresh.clustering.distance == server.clustering.distance).all()
    assert all(torch.equal(fresh.experts[k], v) for k, v in server.experts.items())
    assert all(torch.equal(a[k], b[k]) for a, b in zip(fresh.routers, server.routers, strict=True)
               for k in a)
    assert fresh.report() == server.report()
    for cid, state in before.local_states.items():
        assert all(torch.equal(after.local_states[cid][k], v) for k, v in state.items())
    assert after.round == 2 and after.history == [{"round": 1}]
    ckpt.set_rng_state(after.rng)
    assert torch.equal(torch.get_rng_state(), before.rng["torch"])


def test_only_the_newest_round_files_are_kept(tmp_path):
    server = server_state_after_two_rounds()
    saved(tmp_path, server, rnd=1)
    saved(tmp_path, server, rnd=2)
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["checkpoint.json", "clients-00002.safetensors", "server-00002.safetensors"]


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    server = server_state_after_two_rounds()
    saved(tmp_path, server, rnd=1)

    def crash(path, text):
        raise outputs.OutputError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(ckpt, "atomic_write", crash)  # the manifest is written last
    with pytest.raises(outputs.OutputError):
        saved(tmp_path, server, rnd=2)
    assert ckpt.load_checkpoint(tmp_path, server.config).round == 1


def test_missing_damaged_or_foreign_checkpoint_is_refused(tmp_path):
    server = server_state_after_two_rounds()
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path, server.config)
    saved(tmp_path, server)
    other = load_config(overrides={"federation": {"rounds": 4, "warmup_rounds": 1,
                                                  "max_experts": 3, "seed": 7}})
    with pytest.raises(ckpt.CheckpointError, match=r"\['federation.seed'\]"):
        ckpt.load_checkpoint(tmp_path, other)
    (tmp_path / "checkpoint" / "server-00002.safetensors").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="damaged checkpoint"):
        ckpt.load_checkpoint(tmp_path, server.config)


def test_only_fedlease_dataclasses_are_rebuilt():
    with pytest.raises(ckpt.CheckpointError, match="not a fedlease dataclass"):
        ckpt._decode({"__dataclass__": "subprocess:Popen", "fields": {}}, {})


def final_round(metrics_path: Path) -> dict:
    return strip_seconds(json.loads(metrics_path.read_text())["rounds"][-1])


def strip_seconds(record: dict) -> dict:
    return {cid: {k: v for k, v in m.items() if "seconds" not in k}
            for cid, m in record["clients"].items()}


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_interrupted_run_resumes_to_the_same_final_metrics(algorithm, tiny_config, tmp_path,
                                                           monkeypatch):
    """In process: stop a run in round 2 (after round 1's checkpoint), resume it, and compare
    with an uninterrupted run of the same seed."""
    tiny_config.federation.rounds = 2
    tiny_config.federation.algorithm = algorithm
    reference = run_simulation(tiny_config, None, progress=False)
    algorithm_cls = ALGORITHMS[algorithm]
    original = algorithm_cls.configure_fit

    def interrupted(self, rnd, first_time=()):
        if rnd == 2:
            raise KeyboardInterrupt
        return original(self, rnd, first_time)

    out = tmp_path / "run"
    monkeypatch.setattr(algorithm_cls, "configure_fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(tiny_config, out, progress=False)
    monkeypatch.undo()
    resumed = run_simulation(tiny_config, out, progress=False, resume=True)
    assert [r["round"] for r in resumed.history] == [1, 2]
    assert strip_seconds(resumed.history[-1]) == strip_seconds(reference.history[-1])
    assert resumed.report == reference.report


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_metrics(tiny_config, tmp_path):
    """Start the CLI as a real process, SIGKILL it once a checkpoint exists, resume, and compare
    with an uninterrupted run of the same seed (about 45 s of CPU time: marked slow)."""
    tiny_config.federation.rounds = 4
    out = tmp_path / "killed"
    config_path = tmp_path / "run.toml"
    config_path.write_text(dump_toml(tiny_config))
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "fedlease.cli", "run", "--config",
                             str(config_path), "--out", str(out), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "checkpoint" / "checkpoint.json"
    deadline = time.monotonic() + 300
    while not manifest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = json.loads(manifest.read_text())["round"]
    assert 1 <= killed_at < 4

    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0
    reference = tmp_path / "reference"
    run_simulation(tiny_config, reference, progress=False)
    assert final_round(out / "metrics.json") == final_round(reference / "metrics.json")
    assert [r["round"] for r in json.loads((out / "metrics.json").read_text())["rounds"]] \
        == [1, 2, 3, 4]
    assert json.loads((out / "clustering.json").read_text())["assignment"] \
        == json.loads((reference / "clustering.json").read_text())["assignment"]


def test_resume_refuses_flags_that_change_the_run(tmp_path, capsys):
    assert cli.main(["run", "--resume", str(tmp_path), "--rounds", "9"]) == 2
    assert "drop --rounds" in capsys.readouterr().err
    assert cli.main(["run", "--resume", str(tmp_path), "--precision", "fp32",
                     "--data-path", str(tmp_path)]) == 2
    assert "drop --precision, --data-path" in capsys.readouterr().err
