"""DP on Flower: each node keeps its client's accounting in its privacy ledger on its own
disk (``node_config["privacy-ledger"]``); with seeded noise the federation reproduces the
simulator's run, epsilon included, and a resumed run continues the ledger."""

import pytest

pytest.importorskip("flwr")

from fedlease.configure import with_overrides  # noqa: E402
from fedlease.errors import ConfigError  # noqa: E402
from fedlease.transports.flower.server_app import run_on_grid  # noqa: E402
from fedlease.transports.flower.settings import read_run_config  # noqa: E402
from fedlease.transports.simulator import run_simulation  # noqa: E402

from .grid import LoopbackGrid, task_identity  # noqa: E402
from .test_loopback import (  # noqa: E402
    CrashingGrid,
    ServerCrash,
    run_config_for,
    run_on_loopback,
    without_timings,
)


def private(config, algorithm: str, rounds: int):
    return with_overrides(config, {"privacy": {"epsilon": 4.0, "seeded_noise": True},
                                   "federation": {"algorithm": algorithm, "rounds": rounds}})


@pytest.mark.parametrize("algorithm", ["fedlease", "fedit"])
def test_private_flower_run_matches_the_simulator(algorithm, tiny_config, tmp_path):
    config = private(tiny_config, algorithm, 2)
    simulated = run_simulation(config, None, progress=False)
    ledgers = {"privacy-ledger": str(tmp_path / "ledgers")}
    flower, _ = run_on_loopback(config, tmp_path, node_config=ledgers)
    assert without_timings(flower.history) == without_timings(simulated.history)
    assert all(m["epsilon"] > 0 for m in flower.history[-1]["clients"].values())
    assert flower.privacy == simulated.privacy
    assert (tmp_path / "flower-out" / "privacy.json").exists()
    assert len(list((tmp_path / "ledgers").glob("*.json"))) == len(flower.tasks)


def test_a_private_node_without_a_ledger_refuses_to_take_part(tiny_config, tmp_path):
    config = private(tiny_config, "fedit", 1)
    with pytest.raises(ConfigError, match="node_config privacy-ledger = None: expected a "
                                          "folder on this node"):
        run_on_loopback(config, tmp_path)


def test_an_interrupted_and_resumed_flower_run_spends_what_one_run_spends(tiny_config,
                                                                          tmp_path):
    """The server dies before round 2; ``resume = true`` is a new Flower run whose nodes have
    a new ``context.state`` (and new processes): their ledgers carry the spending on, so the
    run ends with the epsilon of the uninterrupted run, not with a fresh budget."""
    config = private(tiny_config, "fedlease", 3)
    whole, _ = run_on_loopback(config, tmp_path / "whole",
                               node_config={"privacy-ledger": str(tmp_path / "whole-ledgers")})
    ledgers = {"privacy-ledger": str(tmp_path / "ledgers")}
    run_config = run_config_for(config, tmp_path / "crashed")
    flower_config, flower_settings = read_run_config(run_config)
    with task_identity(), pytest.raises(ServerCrash):
        run_on_grid(CrashingGrid(run_config, 4, node_config=ledgers, crash_round=2),
                    flower_config, flower_settings)
    flower_config, flower_settings = read_run_config({**run_config, "resume": True})
    with task_identity():  # new nodes: nothing of the first run's context.state
        resumed = run_on_grid(LoopbackGrid(run_config, 4, node_config=ledgers), flower_config,
                              flower_settings)
    final = {cid: m["epsilon"] for cid, m in resumed.history[-1]["clients"].items()}
    assert final == {cid: m["epsilon"] for cid, m in whole.history[-1]["clients"].items()}
    assert min(final.values()) > 3.9  # the whole budget (4), as calibrated
    assert resumed.privacy["clients"] == whole.privacy["clients"]
