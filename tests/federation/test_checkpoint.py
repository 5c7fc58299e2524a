"""Checkpoints: the server state round-trips exactly, a damaged or foreign checkpoint is refused,
and a run killed with SIGKILL resumes to the same final metrics as an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlease import cli
from fedlease.algorithms import ALGORITHMS
from fedlease.config import dump_toml
from fedlease.configure import with_overrides
from fedlease.federation import checkpoint as ckpt
from fedlease.reporting import outputs
from fedlease.transports.simulator import run_simulation

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
    other = with_overrides(server.config, {"federation": {"seed": 7}})
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


@pytest.mark.parametrize("algorithm, allocation, warmup",
                         [(name, "lora-b", 1) for name in ALGORITHMS]
                         + [("fedlease", "embedding", 0), ("fedlease", "hybrid", 1)])
def test_interrupted_run_resumes_to_the_same_final_metrics(algorithm, allocation, warmup,
                                                           tiny_config, tmp_path,
                                                           interrupted_then_resumed):
    """In process: stop a run in round 2 (after round 1's checkpoint), resume it, and compare
    with an uninterrupted run of the same seed (the embeddings travel in the checkpoint)."""
    tiny_config.federation.rounds = 2
    tiny_config.federation.algorithm = algorithm
    tiny_config.federation.allocation = allocation
    tiny_config.federation.warmup_rounds = warmup
    reference = run_simulation(tiny_config, None, progress=False)
    resumed = interrupted_then_resumed(tiny_config, tmp_path / "run", stop_round=2)
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


# -- integrity: hashes, finite values, structure ------------------------------------------

def manifest_path(folder):
    return folder / "checkpoint" / "checkpoint.json"


def rewrite_manifest(folder, change):
    """Edit checkpoint.json and re-sign it, as a tool that knows the format would."""
    manifest = json.loads(manifest_path(folder).read_text())
    manifest.pop("manifest_sha256")
    change(manifest)
    manifest["manifest_sha256"] = ckpt._manifest_digest(json.loads(json.dumps(manifest)))
    manifest_path(folder).write_text(json.dumps(manifest))


@pytest.mark.parametrize("part", ["server", "clients"])
@pytest.mark.parametrize("damage", ["bit flip", "truncated"])
def test_changed_tensor_data_is_refused_by_its_hash(tmp_path, part, damage):
    server = server_state_after_two_rounds()
    saved(tmp_path, server)
    path = tmp_path / "checkpoint" / f"{part}-00002.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "bit flip":
        data[-3] ^= 0x01  # inside the tensor data: still a valid safetensors file
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError,
                       match=rf"{path}: damaged checkpoint: its content does not match the "
                             "SHA-256 recorded in checkpoint.json"):
        ckpt.load_checkpoint(tmp_path, server.config)


def test_non_finite_values_are_refused(tmp_path):
    server = server_state_after_two_rounds()
    local = {"c0": {"head.weight": torch.tensor([[0.0, float("nan")]])}}
    ckpt.save_checkpoint(tmp_path, ckpt.Checkpoint(2, ckpt.algorithm_state(server), local, [],
                                                   ckpt.rng_state()), server.config)
    with pytest.raises(ckpt.CheckpointError,
                       match=r"clients-00002.safetensors: client 'c0': tensor 'head.weight' "
                             "holds NaN or infinite values"):
        ckpt.load_checkpoint(tmp_path, server.config)


@pytest.mark.parametrize("key", sorted(ckpt.MANIFEST_FIELDS))
def test_a_manifest_missing_an_entry_names_it(tmp_path, key):
    server = server_state_after_two_rounds()
    saved(tmp_path, server)
    manifest = json.loads(manifest_path(tmp_path).read_text())
    del manifest[key]
    manifest_path(tmp_path).write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match=str(manifest_path(tmp_path))):
        ckpt.load_checkpoint(tmp_path, server.config)


def test_an_edited_manifest_is_refused_by_its_hash(tmp_path):
    server = server_state_after_two_rounds()
    saved(tmp_path, server)
    text = manifest_path(tmp_path).read_text().replace('"round": 1', '"round": 7')
    manifest_path(tmp_path).write_text(text)
    with pytest.raises(ckpt.CheckpointError, match="its content does not match its SHA-256"):
        ckpt.load_checkpoint(tmp_path, server.config)


@pytest.mark.parametrize("change", [
    lambda m: m["state"].update({"__dict__": [[{"__tensor__": "nowhere"}, 1]]}),
    lambda m: m.update({"clients": ["c0"]}),  # tensors of client 1 have no owner
    lambda m: m["state"].pop("__dict__"),
    lambda m: m.update({"files": {"server": "../../etc/passwd", "clients": "x"}}),
])
def test_structural_damage_is_a_checkpoint_error_naming_the_file(tmp_path, change):
    server = server_state_after_two_rounds()
    saved(tmp_path, server)
    rewrite_manifest(tmp_path, change)
    with pytest.raises(ckpt.CheckpointError, match="checkpoint"):
        ckpt.load_checkpoint(tmp_path, server.config)


class StubModel:
    """The two things ``check_fits_model`` reads of a model."""

    hidden_size = 5

    def adapter_shapes(self):
        return {"l0.query": (6, 5), "l0.value": (6, 5)}


def fitting_checkpoint(rank=4):
    server = server_state_after_two_rounds()
    state = {f"adapter.{name}.{part}": torch.zeros(shape)
             for name in ("l0.query", "l0.value")
             for part, shape in (("lora_A", (1, rank, 6)), ("lora_B", (1, 5, rank)))}
    state.update({"head.weight": torch.zeros(2, 5), "head.bias": torch.zeros(2)})
    return ckpt.Checkpoint(2, ckpt.algorithm_state(server), {"c0": state}, [], {})


@pytest.mark.parametrize("damage", ["rank", "head", "missing", "server"])
def test_a_checkpoint_that_does_not_fit_the_model_is_refused(tmp_path, damage):
    checkpoint = fitting_checkpoint()
    ckpt.check_fits_model(checkpoint, StubModel(), 4, tmp_path)
    state = checkpoint.local_states["c0"]
    if damage == "rank":
        checkpoint = fitting_checkpoint(rank=8)
    elif damage == "head":
        state["head.weight"] = torch.zeros(2, 7)
    elif damage == "missing":
        del state["adapter.l0.value.lora_B"]
    else:
        key = next(k for k in checkpoint.server_state["experts"] if k.endswith("lora_A"))
        checkpoint.server_state["experts"][key] = torch.zeros(3, 4, 9)
    with pytest.raises(ckpt.CheckpointError, match=rf"{tmp_path}: .*does not fit the model"):
        ckpt.check_fits_model(checkpoint, StubModel(), 4, tmp_path)


@pytest.fixture(scope="module")
def intact_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("intact")
    server = server_state_after_two_rounds()
    saved(folder, server)
    return folder, server.config


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_damaged_byte_or_truncation_is_a_checkpoint_error(intact_checkpoint,
                                                              tmp_path_factory, data):
    """Property: flip any bits of any byte, or cut any file short: the resume is refused with a
    CheckpointError naming a checkpoint file, never another exception, never a silent load."""
    intact, config = intact_checkpoint
    folder = tmp_path_factory.mktemp("damaged")
    shutil.copytree(intact / "checkpoint", folder / "checkpoint")
    path = data.draw(st.sampled_from(sorted((folder / "checkpoint").iterdir())), label="file")
    original = path.read_bytes()
    at = data.draw(st.integers(0, len(original) - 1), label="where")
    if data.draw(st.booleans(), label="truncate"):
        damaged = original[:at]
    else:
        damaged = original[:at] + bytes([original[at] ^ data.draw(st.integers(1, 255))]) \
            + original[at + 1:]
    path.write_bytes(damaged)
    with pytest.raises(ckpt.CheckpointError) as raised:
        ckpt.load_checkpoint(folder, config)
    assert str(folder / "checkpoint") in str(raised.value)


def test_resuming_on_changed_data_is_refused(tiny_config, tmp_path):
    """Same config, same clients, one example edited: the checkpoint is not this data's."""
    tiny_config.federation.rounds = 2
    out = tmp_path / "run"
    run_simulation(tiny_config, out, progress=False)
    path = Path(tiny_config.data.path) / "colors-0.jsonl"
    path.write_text(path.read_text().replace("red", "blue", 1))
    with pytest.raises(ckpt.CheckpointError, match="the clients' examples differ from those the "
                                                   "run began with"):
        run_simulation(tiny_config, out, progress=False, resume=True)
