"""The ServerApp and ClientApp exchanging real Flower messages in this process (LoopbackGrid):
same results as the in-process simulator, sampling, dropout, bad run config."""

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from fedlease.algorithms import ALGORITHMS  # noqa: E402
from fedlease.config import config_to_dict
from fedlease.errors import ConfigError
from fedlease.reporting.outputs import read_metrics
from fedlease.transports.flower.server_app import run_on_grid  # noqa: E402
from fedlease.transports.flower.settings import (  # noqa: E402
    FlowerSettings,
    parse_overrides,
    read_run_config,
)
from fedlease.transports.simulator import run_simulation  # noqa: E402

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
    inline = ", ".join(f"{section}.{key} = {toml_value(value)}"
                       for section, values in parts.items() for key, value in values.items())
    return {"config": "", "overrides": "{" + inline + "}", **settings}


def toml_value(value) -> str:
    """JSON is TOML for these values, but for infinity (privacy.epsilon's default)."""
    return "inf" if value == float("inf") else json.dumps(value)


def run_on_loopback(config, tmp_path, num_nodes=4, silent_after=(), node_config=None,
                    **settings):
    run_config = run_config_for(config, tmp_path, **settings)
    grid = LoopbackGrid(run_config, num_nodes, silent_after, node_config)
    flower_config, flower_settings = read_run_config(run_config)
    with task_identity():
        return run_on_grid(grid, flower_config, flower_settings), grid


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


def sample_two_of_four(config, algorithm: str) -> None:
    """3 rounds of ``algorithm`` with 2 of the 4 clients per round: seed 1 never samples
    colors-1."""
    config.federation.algorithm = algorithm
    config.federation.rounds = 3
    config.federation.clients_per_round = 2
    config.federation.seed = 1


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_a_sampled_run_gives_the_same_metrics_on_flower_and_in_the_simulator(
        algorithm, small_config, tmp_path):
    # federation.clients_per_round: one sampling rule of (seed, round, clients) on both
    # runners
    sample_two_of_four(small_config, algorithm)
    simulated = run_simulation(small_config, None, progress=False)
    flower, grid = run_on_loopback(small_config, tmp_path)
    assert without_timings(flower.history) == without_timings(simulated.history)
    assert flower.report == simulated.report
    assert [e["traffic"] for e in flower.history] == [e["traffic"] for e in simulated.history]
    trained = [{c for c, m in e["clients"].items() if "train_loss" in m}
               for e in flower.history]
    assert [len(t) for t in trained] == [2, 2, 2]
    assert "colors-1" not in set().union(*trained)
    # per round the sampled clients are evaluated; the last round, every client (colors-1 as
    # a newcomer: initial tensors under the server's, the common head init)
    assert set(flower.history[0]["clients"]) == trained[0]
    assert sorted(flower.history[-1]["clients"]) == sorted(flower.tasks)
    assert sum(grid.trained.values()) == 6


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
    small_config.federation.allocation = "lora-b"  # joins by its warm-up LoRA
    result, _ = run_on_loopback(small_config, tmp_path, silent_after={4: 0})
    assert "colors-1" not in result.report["assignment"]
    assert result.report["clients"] == ["animals-0", "animals-1", "colors-0"]


def test_fraction_train_samples_clients_and_late_clients_join(small_config, tmp_path):
    small_config.federation.seed = 8  # a seed whose two samples of 2 clients are disjoint
    small_config.federation.allocation = "lora-b"  # round 2's clients join by a warm-up LoRA
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
    with task_identity():  # the nodes opt in to sending their label counts
        flower = run_on_grid(LoopbackGrid(run_config, 4,
                                          node_config={"share-label-counts": True}),
                             flower_config, flower_settings)
    assert list(flower.tasks) == ["colors-0", "colors-1", "colors-2", "colors-3"]
    assert without_timings(flower.history) == without_timings(simulated.history)
    data = json.loads((tmp_path / "flower-out" / "data.json").read_text())
    assert data == json.loads((tmp_path / "sim-out" / "data.json").read_text())
    assert sum(c["train"] + c["test"] for c in data["clients"].values()) == 160
    assert (tmp_path / "flower-out" / "plots" / "label_histogram.png").stat().st_size > 1000


def test_label_counts_leave_a_node_only_if_it_opts_in(small_config, tmp_path):
    """By default a node describes its task and sizes only: no per-label counts reach the
    server or data.json."""
    small_config.federation.algorithm, small_config.federation.rounds = "fedit", 1
    run_on_loopback(small_config, tmp_path)
    data = json.loads((tmp_path / "flower-out" / "data.json").read_text())
    for summary in data["clients"].values():
        assert set(summary) == {"task", "train", "test"}


class ServerCrash(Exception):
    pass


class CrashingGrid(LoopbackGrid):
    """Raises, as a ServerApp killed between two rounds would stop, when the server sends
    the train messages of round ``crash_round``; the nodes (and their state) live on."""

    def __init__(self, *args, crash_round: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_round, self.train_exchanges = crash_round, 0

    def send_and_receive(self, messages, *, timeout=None):
        if messages and messages[0].metadata.message_type == "train":
            self.train_exchanges += 1
            if self.train_exchanges == self.crash_round:
                self.crash_round = 0  # once
                raise ServerCrash
        return super().send_and_receive(messages, timeout=timeout)


@pytest.mark.parametrize("algorithm", ["fedlease", "ifca-lora", "fedsa-lora"])
def test_a_restarted_server_app_resumes_the_run_exactly(algorithm, small_config, tmp_path):
    # the server checkpoints after every round; started again with resume = true on the same
    # nodes it continues after round 2 and ends where the uninterrupted run ends, sampling
    # (fraction-train) included
    small_config.federation.algorithm = algorithm
    small_config.federation.rounds = 4
    settings = {"fraction-train": 0.75}
    whole, _ = run_on_loopback(small_config, tmp_path / "whole", **settings)

    run_config = run_config_for(small_config, tmp_path / "crashed", **settings)
    grid = CrashingGrid(run_config, 4, crash_round=3)
    flower_config, flower_settings = read_run_config(run_config)
    with task_identity(), pytest.raises(ServerCrash):
        run_on_grid(grid, flower_config, flower_settings)
    out = tmp_path / "crashed" / "flower-out"
    assert json.loads((out / "checkpoint" / "checkpoint.json").read_text())["round"] == 2
    with pytest.raises(ConfigError, match="holds another run"):  # not without resume
        with task_identity():
            run_on_grid(grid, flower_config, flower_settings)
    flower_config, flower_settings = read_run_config({**run_config, "resume": True})
    with task_identity():
        resumed = run_on_grid(grid, flower_config, flower_settings)
    assert [e["round"] for e in resumed.history] == [1, 2, 3, 4]
    assert without_timings(resumed.history) == without_timings(whole.history)
    assert resumed.report == whole.report
    assert json.loads((out / "metrics.json").read_text())["rounds"][-1]["round"] == 4


def test_resume_is_refused_when_the_nodes_hold_other_clients(small_config, tmp_path):
    from fedlease.errors import CheckpointError

    run_config = run_config_for(small_config, tmp_path)
    grid = CrashingGrid(run_config, 4, crash_round=2)
    flower_config, flower_settings = read_run_config(run_config)
    with task_identity(), pytest.raises(ServerCrash):
        run_on_grid(grid, flower_config, flower_settings)
    flower_config, flower_settings = read_run_config({**run_config, "resume": True})
    with task_identity(), pytest.raises(CheckpointError, match="clients"):
        run_on_grid(LoopbackGrid(run_config, 3), flower_config, flower_settings)


@pytest.mark.parametrize("algorithm", ["fedsa-lora", "feddpa", "fedlease"])
def test_a_run_resumed_on_nodes_without_their_state_starts_them_afresh(algorithm, small_config,
                                                                      tmp_path):
    # `flwr run` with resume=true is a new Flower run: every node's context.state is new. The
    # clients say so when queried; their next train message carries the initial tensors (as a
    # first-time client's does), so a client whose local LoRA parts are gone trains again
    small_config.federation.algorithm = algorithm
    small_config.federation.rounds = 4
    run_config = run_config_for(small_config, tmp_path)
    flower_config, flower_settings = read_run_config(run_config)
    with task_identity(), pytest.raises(ServerCrash):
        run_on_grid(CrashingGrid(run_config, 4, crash_round=3), flower_config,
                       flower_settings)
    before = read_metrics(tmp_path / "flower-out")["rounds"]
    flower_config, flower_settings = read_run_config({**run_config, "resume": True})
    with task_identity():
        resumed = run_on_grid(LoopbackGrid(run_config, 4), flower_config, flower_settings)
    assert [e["round"] for e in resumed.history] == [1, 2, 3, 4]
    assert without_timings(resumed.history[:2]) == without_timings(before)
    for entry in resumed.history[2:]:
        assert sorted(entry["clients"]) == sorted(resumed.tasks) and not entry["rejected"]


def test_feddpa_client_joining_late_gets_both_of_its_loras(small_config, tmp_path):
    # a client first sampled in round 2 starts from the initial global and personal LoRAs,
    # the global one replaced by the server's average (it used to get the global one alone)
    small_config.federation.algorithm = "feddpa"
    small_config.federation.seed = 8  # round 1 and round 2 sample disjoint pairs
    result, _ = run_on_loopback(small_config, tmp_path, **{"fraction-train": 0.5})
    trained = [{c for c, m in e["clients"].items() if "train_loss" in m}
               for e in result.history]
    assert [len(t) for t in trained] == [2, 2] and not trained[0] & trained[1]
    assert not result.history[1]["rejected"]


@pytest.mark.parametrize("algorithm", ["fedlease", "fedsa-lora"])
def test_a_rejected_upload_and_thinned_evaluation_are_the_same_on_both_runners(
        algorithm, small_config, tmp_path, monkeypatch):
    """colors-1's round-1 upload holds NaN and is rejected on both runners: it is new again in
    round 2 on both (one rule, sampling.first_timers: never accepted), and evaluation is
    thinned to half the trained clients by the same draw (fraction-evaluate on Flower,
    federation.fraction_evaluate in the simulator); the rejected bytes count on both."""
    from fedlease.algorithms.base import AlgorithmClient

    honest = AlgorithmClient.fit.__func__
    poisoned_rounds = []

    def poisoned(cls, ins, local_state, trainer):
        reply, state = honest(cls, ins, local_state, trainer)
        if trainer.data.client_id == "colors-1" and not poisoned_rounds:
            poisoned_rounds.append(ins.seed)
            reply.arrays = {k: torch.full_like(v, float("nan")) for k, v in reply.arrays.items()}
        return reply, state

    monkeypatch.setattr(AlgorithmClient, "fit", classmethod(poisoned))
    small_config.federation.algorithm = algorithm
    small_config.federation.rounds = 3
    small_config.federation.fraction_evaluate = 0.5
    simulated = run_simulation(small_config, None, progress=False)
    poisoned_rounds.clear()
    small_config.federation.fraction_evaluate = 1.0
    flower, _ = run_on_loopback(small_config, tmp_path, **{"fraction-evaluate": 0.5})
    assert [list(e["rejected"]) for e in flower.history] == [["colors-1"], [], []]
    assert without_timings(flower.history) == without_timings(simulated.history)
    assert [e["traffic"] for e in flower.history] == [e["traffic"] for e in simulated.history]
    assert flower.history[0]["traffic"]["clients"]["colors-1"][1] > 0
    assert [len(e["clients"]) for e in flower.history] == [1, 2, 4]  # 3 and 4 trained, halved


@pytest.mark.parametrize("algorithm, precision", [("fedlease", "int8"), ("fedit", "bfloat16")])
def test_a_transport_precision_gives_the_same_run_on_flower_and_in_the_simulator(
        algorithm, precision, small_config, tmp_path):
    # the simulator rounds what would travel, Flower's records send it encoded: same values
    small_config.federation.algorithm = algorithm
    full = run_simulation(small_config, None, progress=False)
    small_config.federation.transport_precision = precision
    simulated = run_simulation(small_config, None, progress=False)
    flower, _ = run_on_loopback(small_config, tmp_path)
    assert without_timings(flower.history) == without_timings(simulated.history)
    assert flower.report == simulated.report
    traffic = [e["traffic"] for e in simulated.history]
    assert [e["traffic"] for e in flower.history] == traffic
    # the tensors were rounded on the way: the run differs from the float32 one
    assert without_timings(simulated.history) != without_timings(full.history)
    for before, after in zip((e["traffic"] for e in full.history), traffic, strict=True):
        for way in ("download", "upload"):
            if precision == "bfloat16":
                assert after[way] == before[way] // 2
            else:  # a quarter, and a 4-byte scale per tensor (of 64 values or more here)
                scales = after[way] - before[way] // 4
                assert 0 < scales <= before[way] // 64 and scales % 4 == 0


@pytest.mark.parametrize("algorithm", ["fedlease", "ifca-lora"])
def test_never_sampled_clients_adapt_by_the_newcomer_protocol_on_both_runners(
        algorithm, small_config, tmp_path):
    # colors-1, never sampled, is evaluated as a newcomer, after federation.newcomer_steps
    # local steps, the same on both runners
    sample_two_of_four(small_config, algorithm)
    as_it_starts = run_simulation(small_config, None, progress=False)
    small_config.federation.newcomer_steps = 2
    simulated = run_simulation(small_config, None, progress=False)
    flower, _ = run_on_loopback(small_config, tmp_path)
    assert without_timings(flower.history) == without_timings(simulated.history)
    last = [without_timings(run.history)[-1] for run in (as_it_starts, simulated)]
    assert last[0]["colors-1"] != last[1]["colors-1"]  # it adapted
    assert {cid: m for cid, m in last[0].items() if cid != "colors-1"} == \
        {cid: m for cid, m in last[1].items() if cid != "colors-1"}  # the others did not


def test_an_algorithm_from_an_entry_point_runs_on_flower_like_in_the_simulator(
        small_config, tmp_path, monkeypatch):
    """A plugin reaches the Flower apps by its entry point alone: the ServerApp's config loading
    registers it (plugins.load_plugins), the ClientApp finds it by name, and the run is the
    simulator's. FedProx of examples/fedprox_plugin, its entry point stood in for."""
    import importlib.util

    from fedlease import plugins

    source = Path(__file__).resolve().parents[3] / "examples" / "fedprox_plugin"
    spec = importlib.util.spec_from_file_location("fedlease_fedprox",
                                                  source / "fedlease_fedprox.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fedlease_fedprox", module)
    spec.loader.exec_module(module)

    class Point:
        name, value, dist = "fedprox", "fedlease_fedprox:FedProx", None
        group = "fedlease.algorithms"

        def load(self):
            return module.FedProx

    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "entry_points",
                        lambda group: [Point()] if group == "fedlease.algorithms" else [])
    monkeypatch.setattr(ALGORITHMS, "_entries", dict(ALGORITHMS._entries))  # undone afterwards
    assert "fedprox" not in ALGORITHMS
    small_config.federation.algorithm = "fedprox"
    flower, _ = run_on_loopback(small_config, tmp_path)  # registers it, as a SuperLink would
    assert ALGORITHMS["fedprox"] is module.FedProx
    simulated = run_simulation(small_config, None, progress=False)
    assert without_timings(flower.history) == without_timings(simulated.history)
    assert flower.report == simulated.report
