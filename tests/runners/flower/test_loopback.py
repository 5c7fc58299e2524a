"""The ServerApp and ClientApp exchanging real Flower messages in this process (LoopbackGrid):
same results as the in-process simulator, sampling, dropout, bad run config."""

import json

import pytest

pytest.importorskip("flwr")

from fedlease.algorithms import ALGORITHMS  # noqa: E402
from fedlease.config import ConfigError, config_to_dict  # noqa: E402
from fedlease.runners.flower.server_app import run_federation  # noqa: E402
from fedlease.runners.flower.settings import (  # noqa: E402
    FlowerSettings,
    parse_overrides,
    read_run_config,
)
from fedlease.runners.simulator import run_simulation  # noqa: E402

from .grid import LoopbackGrid, task_identity  # noqa: E402


@pytest.fixture
def small_config(tiny_config):
    """tiny_config cut to what these tests need: one batch per client and round, 2 rounds
    (warm-up + allocation, then one round with the experts)."""
    tiny_config.train.batch_size = 24
    tiny_config.federation.rounds = 2
    return tiny_config


def run_config_for(config, tmp_path, **settings) -> dict:
    """The Flower run config that stands for ``config`` (overrides of every section)."""
    parts = config_to_dict(config)
    parts["output"]["dir"] = str(tmp_path / "flower-out")
    inline = ", ".join(f"{section}.{key} = {json.dumps(value)}"
                       for section, values in parts.items() for key, value in values.items())
    return {"config": "", "overrides": "{" + inline + "}", **settings}


def run_on_loopback(config, tmp_path, num_nodes=4, silent_after=(), **settings):
    run_config = run_config_for(config, tmp_path, **settings)
    grid = LoopbackGrid(run_config, num_nodes, silent_after)
    flower_config, flower_settings = read_run_config(run_config)
    with task_identity():
        return run_federation(grid, flower_config, flower_settings), grid


def without_timings(history):
    return [{cid: {k: v for k, v in m.items() if "seconds" not in k}
             for cid, m in entry["clients"].items()} for entry in history]


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_flower_apps_reproduce_the_simulator_exactly(algorithm, small_config, tmp_path):
    # same process, same seeds, same order of every sum: nothing may differ, not even the
    # last bit (tensors travel as .npy bytes, which are exact)
    small_config.federation.algorithm = algorithm
    simulated = run_simulation(small_config, None, progress=False)
    flower, _ = run_on_loopback(small_config, tmp_path)
    assert flower.report == simulated.report
    assert without_timings(flower.history) == without_timings(simulated.history)
    out = tmp_path / "flower-out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    if "assignment" in simulated.report:
        assert "adjusted Rand index" in (out / "summary.txt").read_text()


def test_a_client_that_stops_answering_does_not_stop_the_run(small_config, tmp_path):
    # node 4 trains in round 1 (warm-up, allocation) and is silent from round 2 on
    result, grid = run_on_loopback(small_config, tmp_path, silent_after={4: 1},
                                   **{"round-timeout": 7.0})
    silent = "colors-1"  # partition 3 of the federation: sorted file names
    assert [sorted(e["clients"]) for e in result.history][0] == sorted(result.tasks)
    for entry in result.history[1:]:
        assert silent not in entry["clients"] and len(entry["clients"]) == 3
        assert entry["mean_accuracy"] == pytest.approx(
            sum(m["accuracy"] for m in entry["clients"].values()) / 3)
        assert all("train_loss" in m for m in entry["clients"].values())
    assert set(grid.timeouts) == {7.0}
    assert "no result" in (tmp_path / "flower-out" / "summary.txt").read_text()


def test_client_missing_at_allocation_is_assigned_later(small_config, tmp_path):
    result, _ = run_on_loopback(small_config, tmp_path, silent_after={4: 0})
    assert "colors-1" not in result.report["assignment"]
    assert result.report["clients"] == ["animals-0", "animals-1", "colors-0"]


def test_fraction_train_samples_clients_and_late_clients_join(small_config, tmp_path):
    small_config.federation.seed = 2  # a seed whose two samples of 2 clients are disjoint
    result, grid = run_on_loopback(small_config, tmp_path, **{"fraction-train": 0.5})
    trained = [{c for c, m in e["clients"].items() if "train_loss" in m}
               for e in result.history]
    assert [len(t) for t in trained] == [2, 2] and not trained[0] & trained[1]
    assert sum(grid.trained.values()) == 4
    # the allocation clustered round 1's clients; round 2's trained for the first time (from
    # the initial LoRA, else training fails), uploaded a warm-up LoRA and joined a cluster
    assert set(result.report["clients"]) == trained[0]
    assert set(result.report["assignment"]) == trained[0] | trained[1]
    assert set(result.history[1]["clients"]) == trained[0] | trained[1]  # all evaluated


def test_settings_are_checked_and_overrides_parsed():
    assert parse_overrides("{federation.rounds = 5, train.lr = 0.01}") == {
        "federation": {"rounds": 5}, "train": {"lr": 0.01}}
    config, settings = read_run_config({"overrides": "{federation.rounds = 5}",
                                        "min-available-clients": 3})
    assert config.federation.rounds == 5 and settings == FlowerSettings(min_available_clients=3)
    with pytest.raises(ConfigError, match="overrides"):
        parse_overrides("federation.rounds = 5")
    with pytest.raises(ConfigError, match="fraction-train = 1.5"):
        read_run_config({"fraction-train": 1.5})
    with pytest.raises(ConfigError, match="federation.rounds"):
        read_run_config({"overrides": "{federation.rounds = 0}"})


def test_generation_runs_on_flower_like_in_the_simulator(tiny_generation_config, tmp_path):
    tiny_generation_config.federation.rounds = 2
    simulated = run_simulation(tiny_generation_config, None, progress=False)
    flower, _ = run_on_loopback(tiny_generation_config, tmp_path)
    assert flower.metric == "rouge_l"
    assert without_timings(flower.history) == without_timings(simulated.history)
    assert "mean_rouge_l" in json.loads(
        (tmp_path / "flower-out" / "metrics.json").read_text())["rounds"][-1]


def test_embedding_allocation_on_flower_matches_the_simulator(small_config, tmp_path):
    # the profile step travels as a query.profile message and is checked like any upload
    small_config.federation.allocation = "embedding"
    small_config.federation.warmup_rounds = 0
    simulated = run_simulation(small_config, None, progress=False)
    flower, _ = run_on_loopback(small_config, tmp_path)
    assert flower.report["signal"] == "embedding"
    assert flower.report["assignment"] == simulated.report["assignment"]
    assert flower.report["distance"] == simulated.report["distance"]
    assert without_timings(flower.history) == without_timings(simulated.history)


def test_partitioned_table_runs_on_flower_like_in_the_simulator(small_config, tmp_path,
                                                               colors_csv):
    # every node partitions the same CSV (Dirichlet, by seed) and keeps partition-id's client
    from fedlease.config import DatasetConfig, dump_toml

    pytest.importorskip("flwr_datasets")
    small_config.data.source = "datasets"
    small_config.data.datasets = [DatasetConfig(path=colors_csv, partitioner="dirichlet", alpha=0.5,
                                                num_partitions=4)]
    small_config.output.dir = str(tmp_path / "flower-out")
    (tmp_path / "run.toml").write_text(dump_toml(small_config))
    simulated = run_simulation(small_config, tmp_path / "sim-out", progress=False)
    run_config = {"config": str(tmp_path / "run.toml"), "overrides": ""}
    flower_config, flower_settings = read_run_config(run_config)
    with task_identity():
        flower = run_federation(LoopbackGrid(run_config, 4), flower_config, flower_settings)
    assert list(flower.tasks) == ["colors-0", "colors-1", "colors-2", "colors-3"]
    assert without_timings(flower.history) == without_timings(simulated.history)
    data = json.loads((tmp_path / "flower-out" / "data.json").read_text())
    assert data == json.loads((tmp_path / "sim-out" / "data.json").read_text())
    assert sum(c["train"] + c["test"] for c in data["clients"].values()) == 160
    assert (tmp_path / "flower-out" / "plots" / "label_histogram.png").stat().st_size > 1000
