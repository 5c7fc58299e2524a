"""DP on Flower: each node's accounting lives in its client's state (``context.state``); with
seeded noise the federation reproduces the simulator's run, epsilon included."""

import pytest

pytest.importorskip("flwr")

from fedlease.configure import with_overrides  # noqa: E402
from fedlease.transports.simulator import run_simulation  # noqa: E402

from .test_loopback import run_on_loopback, without_timings  # noqa: E402


@pytest.mark.parametrize("algorithm", ["fedlease", "fedit"])
def test_private_flower_run_matches_the_simulator(algorithm, tiny_config, tmp_path):
    config = with_overrides(tiny_config, {"privacy": {"epsilon": 4.0, "seeded_noise": True},
                                          "federation": {"algorithm": algorithm,
                                                         "rounds": 2}})
    simulated = run_simulation(config, None, progress=False)
    flower, _ = run_on_loopback(config, tmp_path)
    assert without_timings(flower.history) == without_timings(simulated.history)
    assert all(m["epsilon"] > 0 for m in flower.history[-1]["clients"].values())
    assert flower.privacy == simulated.privacy
    assert (tmp_path / "flower-out" / "privacy.json").exists()
