"""Flower's real processes on loopback (slow: every SuperNode starts a process per message):
`flwr run` in the simulation engine against the in-process simulator, a deployed SuperLink with
SuperNodes (insecure and TLS), and a SuperNode killed in the middle of a run."""

import json
import os
import shutil
import signal
import socket
import ssl
import threading
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedlease.transports.simulator import run_simulation  # noqa: E402

from .processes import LocalFlower, self_signed_certificates, wait_for  # noqa: E402

pytestmark = pytest.mark.slow


def overrides(config, out_dir, **changes) -> str:
    """The `--run-config` that runs ``config`` (tiny model, synthetic data) on Flower."""
    values = {
        "model.path": config.model.path, "model.max_length": config.model.max_length,
        "data.source": config.data.source, "data.path": config.data.path,
        "train.batch_size": 24, "train.lr": config.train.lr,
        "federation.warmup_rounds": 1, "federation.max_experts": 3, "federation.seed": 0,
        "output.dir": str(out_dir), **changes,
    }
    inline = ", ".join(f"{k} = '{v}'" if isinstance(v, str) else f"{k} = {v!r}"
                       for k, v in values.items())
    return f'overrides="{{{inline}}}"'


@pytest.fixture
def flower(tmp_path):
    started = []

    def make(certificates=None):
        local = LocalFlower(tmp_path / f"flower-{len(started)}", certificates)
        local.folder.mkdir(parents=True, exist_ok=True)
        started.append(local)
        return local

    yield make
    for local in started:
        local.close()


def node_folders(federation, tmp_path) -> list:
    """One folder per SuperNode holding only that node's client file: its local partition."""
    folders = []
    for i, path in enumerate(sorted(federation.glob("*.jsonl"))):
        folder = tmp_path / f"node-{i}"
        folder.mkdir()
        shutil.copy(path, folder / path.name)
        folders.append(folder)
    return folders


def read_run(out_dir):
    return (json.loads((out_dir / "metrics.json").read_text())["rounds"],
            json.loads((out_dir / "clustering.json").read_text()))


def check_run(result, local, out_dir, rounds, clients):
    assert result.returncode == 0, result.stdout + result.stderr + local.logs()
    assert (out_dir / "summary.txt").exists(), result.stdout + local.logs()
    history, clustering = read_run(out_dir)
    assert [r["round"] for r in history] == list(range(1, rounds + 1))
    for entry in history:
        assert set(entry["clients"]) <= set(clients)
        for metrics in entry["clients"].values():
            assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    assert set(history[0]["clients"]) == set(clients)
    assert set(clustering["assignment"]) == set(clients)
    return history, clustering


def test_flwr_run_in_the_simulation_engine_matches_the_simulator(tiny_config, flower, tmp_path):
    tiny_config.train.batch_size = 24
    tiny_config.federation.rounds = 2
    simulated = run_simulation(tiny_config, None, progress=False)
    local = flower()
    local.start_superlink(simulation=True)
    out = tmp_path / "sim-out"
    result = local.run(overrides(tiny_config, out, **{"federation.rounds": 2}),
                       federation_config="num-supernodes=4 client-resources-num-cpus=1")
    history, clustering = check_run(result, local, out, 2, list(simulated.tasks))
    assert clustering["assignment"] == simulated.report["assignment"]
    for ours, theirs in zip(history, simulated.history, strict=True):
        for cid, metrics in theirs["clients"].items():
            # accuracies must agree exactly; losses to 1e-5: other processes may sum in another
            # thread/SIMD order (float32 rounding), nothing else may differ (same seeds)
            assert ours["clients"][cid]["accuracy"] == metrics["accuracy"]
            for key in ("loss", "train_loss"):
                assert ours["clients"][cid][key] == pytest.approx(metrics[key], abs=1e-5)


@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls"])
def test_superlink_and_supernodes_on_loopback(tiny_config, tiny_federation, flower, tmp_path,
                                              tls):
    local = flower(self_signed_certificates(tmp_path / "certs") if tls else None)
    local.start_superlink()
    folders = node_folders(tiny_federation, tmp_path)[:2]
    for i, folder in enumerate(folders):
        local.start_supernode(i, f'data-path="{folder}"')
    out = tmp_path / "out"
    result = local.run(overrides(tiny_config, out, **{"federation.rounds": 2}))
    clients = [f.stem for folder in folders for f in folder.glob("*.jsonl")]
    history, _ = check_run(result, local, out, 2, clients)
    assert all(set(e["clients"]) == set(clients) for e in history)
    if tls:  # the SuperLink speaks TLS with the certificate the test's CA signed
        context = ssl.create_default_context(cafile=str(local.certificates["ca"]))
        with socket.create_connection(("127.0.0.1", local.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
            assert tls_socket.version().startswith("TLS")
        assert "--insecure" not in (local.folder / "superlink.log").read_text()


def test_a_supernode_killed_mid_run_does_not_stop_it(tiny_config, tiny_federation, flower,
                                                    tmp_path):
    local = flower()
    local.start_superlink()
    folders = node_folders(tiny_federation, tmp_path)[:3]
    nodes = [local.start_supernode(i, f'data-path="{folder}"')
             for i, folder in enumerate(folders)]
    out = tmp_path / "out"

    def kill_after_round_one():
        wait_for(lambda: (out / "metrics.json").exists(), 400, "round 1")
        local.stop(nodes[2])

    killer = threading.Thread(target=kill_after_round_one, daemon=True)
    killer.start()
    result = local.run(overrides(tiny_config, out, **{
        "federation.rounds": 3}) + " round-timeout=120.0 min-available-clients=3")
    killer.join(timeout=5)
    clients = [f.stem for folder in folders for f in folder.glob("*.jsonl")]
    history, _ = check_run(result, local, out, 3, clients)
    killed = next(folders[2].glob("*.jsonl")).stem
    assert killed not in history[-1]["clients"] and len(history[-1]["clients"]) == 2


def descendants(pid: int) -> dict[int, str]:
    """The processes ``pid`` started, directly or not: pid -> command line."""
    parent, command = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
                command[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode()
            except (OSError, ValueError):
                continue
    found, frontier = {}, [pid]
    while frontier:
        current = frontier.pop()
        for child, ppid in parent.items():
            if ppid == current and child not in found:
                found[child] = command[child]
                frontier.append(child)
    return found


def server_app_processes(superlink) -> list[int]:
    """The ServerApp processes the SuperLink started: their pids."""
    return [pid for pid, command in descendants(superlink.pid).items()
            if "serverapp" in command.lower()]


def test_a_killed_server_app_is_resumed_by_a_new_run(tiny_config, tiny_federation, flower,
                                                     tmp_path):
    # the ServerApp is killed after round 1's checkpoint; `flwr run ... resume=true` (a new
    # Flower run, so the nodes' context.state is new) continues from round 2 to the end
    local = flower()
    local.start_superlink()
    superlink = local.processes[0]
    folders = node_folders(tiny_federation, tmp_path)[:2]
    for i, folder in enumerate(folders):
        local.start_supernode(i, f'data-path="{folder}"')
    out = tmp_path / "out"
    run_config = overrides(tiny_config, out, **{"federation.rounds": 3})
    first = {}
    runner = threading.Thread(target=lambda: first.update(result=local.run(run_config)),
                              daemon=True)
    runner.start()
    wait_for(lambda: (out / "checkpoint" / "checkpoint.json").exists(), 400, "round 1")
    wait_for(lambda: server_app_processes(superlink), 60,
             f"the ServerApp process among {descendants(superlink.pid)}")
    for pid in server_app_processes(superlink):
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=300)
    killed_at = json.loads((out / "checkpoint" / "checkpoint.json").read_text())["round"]
    assert killed_at < 3, local.logs()
    result = local.run(run_config + " resume=true")
    clients = [f.stem for folder in folders for f in folder.glob("*.jsonl")]
    history, _ = check_run(result, local, out, 3, clients)
    assert all(set(e["clients"]) == set(clients) for e in history)
