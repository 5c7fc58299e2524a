"""Client sampling (federation.clients_per_round): the one rule, its checks, a sampled run in
the simulator, client states on disk and the traffic each round records."""

import pytest
import torch

from fedlease.configure import load_config
from fedlease.errors import ConfigError
from fedlease.federation.client_states import DiskStates, MemoryStates
from fedlease.federation.sampling import ClientSampling
from fedlease.transports.simulator import run_simulation

IDS = [f"c{i}" for i in range(10)]


def sampled_clients(order, clients_per_round, seed, rnd):
    return ClientSampling(clients_per_round, seed, rounds=10).fit_clients(order, rnd)


def test_the_rule_is_a_function_of_seed_round_and_clients():
    first = sampled_clients(IDS, 3, seed=0, rnd=1)
    assert first == sampled_clients(list(IDS), 3, seed=0, rnd=1)  # no hidden state
    assert len(first) == 3 and first == [c for c in IDS if c in first]  # in client order
    rounds = {tuple(sampled_clients(IDS, 3, 0, rnd)) for rnd in range(1, 11)}
    assert len(rounds) > 5  # rounds differ
    assert sampled_clients(IDS, 3, 1, 1) != first or sampled_clients(IDS, 3, 1, 2) != \
        sampled_clients(IDS, 3, 0, 2)  # seeds differ
    assert sampled_clients(IDS, 0, 0, 1) == IDS == sampled_clients(IDS, 10, 0, 1)


def test_evaluation_covers_the_round_then_everyone():
    chosen, sampling = ["c1", "c4"], ClientSampling(clients_per_round=2, seed=0, rounds=5)
    assert sampling.evaluate_clients(2, IDS, chosen, {"c1", "c4", "c7"}) == ["c1", "c4"]
    assert sampling.evaluate_clients(2, IDS, chosen, {"c4"}) == ["c4"]  # c1's upload rejected
    assert sampling.evaluate_clients(5, IDS, chosen, {"c4"}) == IDS
    # without sampling every client is chosen; one never accepted waits for the last round
    everyone = ClientSampling(clients_per_round=0, seed=0, rounds=5)
    accepted = set(IDS) - {"c1"}
    assert not everyone.samples
    assert everyone.evaluate_clients(2, IDS, IDS, accepted) == [c for c in IDS if c != "c1"]
    assert everyone.evaluate_clients(5, IDS, IDS, accepted) == IDS


def test_evaluation_is_thinned_by_a_seeded_draw_and_newcomers_are_the_never_accepted():
    half = ClientSampling(clients_per_round=0, seed=3, rounds=5, fraction_evaluate=0.5)
    picked = half.evaluate_clients(2, IDS, IDS, set(IDS))
    assert len(picked) == 5 and picked == half.evaluate_clients(2, IDS, IDS, set(IDS))
    assert picked != half.evaluate_clients(3, IDS, IDS, set(IDS))  # another round's draw
    assert half.evaluate_clients(5, IDS, IDS, set(IDS)) == IDS  # the last round: everyone
    assert half.evaluate_clients(2, IDS, IDS, {"c2"}) == ["c2"]  # at least one
    assert ClientSampling.first_timers(["c1", "c2", "c3"], {"c2", "c3"}, {"c3"}) == ["c1", "c3"]


@pytest.mark.parametrize("value", [-1, 11])
def test_clients_per_round_out_of_range_is_refused_before_any_work(value):
    with pytest.raises(ConfigError, match=r"federation.clients_per_round = .*\[0, 10\]"):
        ClientSampling(value, seed=0, rounds=3).check(10)


def test_config_checks_clients_per_round_and_label_skew():
    with pytest.raises(ConfigError, match="federation.clients_per_round = -2"):
        load_config(overrides={"federation": {"clients_per_round": -2}})
    with pytest.raises(ConfigError, match="clients_per_round = 17: expected at most the 16"):
        load_config(overrides={"federation": {"clients_per_round": 17}})
    with pytest.raises(ConfigError, match="data.label_skew = -0.5"):
        load_config(overrides={"data": {"label_skew": -0.5}})
    with pytest.raises(ConfigError, match="label_skew = 0.5: applies to data.source = builtin"):
        load_config(overrides={"data": {"label_skew": 0.5, "source": "jsonl", "path": "x"}})


def test_a_sampled_jsonl_federation_too_small_is_refused_before_training(tiny_config):
    tiny_config.federation.clients_per_round = 5  # the tiny federation has 4 clients
    with pytest.raises(ConfigError, match="clients_per_round = 5"):
        run_simulation(tiny_config, None, progress=False)


def test_a_sampled_run_trains_few_clients_and_evaluates_all_at_the_end(tiny_config, tmp_path):
    tiny_config.federation.clients_per_round = 2
    tiny_config.federation.seed = 1  # never samples colors-1 in 3 rounds
    result = run_simulation(tiny_config, tmp_path / "run", progress=False)
    trained = [{c for c, m in e["clients"].items() if "train_loss" in m}
               for e in result.history]
    assert [len(t) for t in trained] == [2, 2, 2]
    assert set(result.history[0]["clients"]) == trained[0]
    assert sorted(result.history[-1]["clients"]) == sorted(result.tasks)
    for entry, picked in zip(result.history, trained, strict=True):
        traffic = entry["traffic"]
        assert set(traffic["clients"]) >= picked
        assert traffic["download"] == sum(d for d, _ in traffic["clients"].values())
        assert traffic["upload"] == sum(u for _, u in traffic["clients"].values())
        for cid in picked:  # each trained client sent exactly its upload
            assert traffic["clients"][cid][1] >= entry["clients"][cid]["upload_bytes"]
    # a client never sampled has no model of its own to save
    assert not (tmp_path / "run" / "adapters" / "colors-1.safetensors").exists()
    assert (tmp_path / "run" / "adapters" / "colors-0.safetensors").exists()
    summary = (tmp_path / "run" / "summary.txt").read_text()
    assert "downloaded MB per client" in summary and "uploaded MB in all" in summary


@pytest.mark.parametrize("algorithm", ["fedlease", "fedalt", "ifca-lora"])
def test_a_round_configures_only_the_clients_it_sends_to(algorithm, tiny_config, monkeypatch):
    """The server's work per round grows with the clients per round, not with N: every round
    but the last (which evaluates everyone) builds instructions for its chosen clients only."""
    from fedlease.algorithms import ALGORITHMS

    tiny_config.federation.algorithm = algorithm
    tiny_config.federation.clients_per_round = 2
    tiny_config.federation.rounds = 3
    cls = ALGORITHMS[algorithm]
    built, original, rounds = [], cls.download, []

    def counted(self, after_round, clients=None):
        instructions = original(self, after_round, clients)
        built.append((len(rounds), len(instructions)))
        return instructions

    def round_done(self, entry, metric):
        rounds.append(entry["round"])

    from fedlease.transports.simulator import InProcessTransport

    monkeypatch.setattr(cls, "download", counted)
    monkeypatch.setattr(InProcessTransport, "round_done", round_done)
    run_simulation(tiny_config, None, progress=False)
    before_last = [n for done, n in built if done < tiny_config.federation.rounds - 1]
    assert before_last and max(before_last) <= 2, built


def test_the_same_run_with_all_clients_is_unchanged_by_sampling_code(tiny_config):
    # clients_per_round = 0 and = the client count sample the same clients; the default
    # keeps states in memory, the sampled one on disk: the results agree to the last bit
    everyone = run_simulation(tiny_config, None, progress=False)
    tiny_config.federation.clients_per_round = 4
    sampled_all = run_simulation(tiny_config, None, progress=False)
    strip = [{c: {k: v for k, v in m.items() if "seconds" not in k}
              for c, m in e["clients"].items()} for e in everyone.history]
    assert strip == [{c: {k: v for k, v in m.items() if "seconds" not in k}
                      for c, m in e["clients"].items()} for e in sampled_all.history]


def test_disk_states_round_trip_and_hold_nothing_in_memory(tmp_path):
    states = DiskStates(["a/b", "c"], tmp_path / "states")
    assert not states.has("a/b") and states["a/b"] == {}
    states["a/b"] = {"x": torch.arange(3.0)}
    assert states.has("a/b") and torch.equal(states["a/b"]["x"], torch.arange(3.0))
    assert sorted(states) == ["a/b", "c"]
    assert any(p.stat().st_size > 0 for p in (tmp_path / "states").rglob("*") if p.is_file())
    states["a/b"] = {}
    assert not states.has("a/b")
    with pytest.raises(KeyError):
        states["unknown"]
    memory = MemoryStates({"a": {}})
    assert not memory.has("a")


@pytest.mark.parametrize("algorithm", ["fedlease", "ifca-lora", "fedsa-lora"])
def test_a_sampled_run_resumes_to_the_same_metrics(algorithm, tiny_config, tmp_path,
                                                   interrupted_then_resumed):
    # the states on disk go with the checkpoint; the rule needs no sampler state
    tiny_config.federation.algorithm = algorithm
    tiny_config.federation.clients_per_round = 2
    tiny_config.federation.seed = 1
    reference = run_simulation(tiny_config, None, progress=False)
    resumed = interrupted_then_resumed(tiny_config, tmp_path / "run", stop_round=3)

    def strip(history):
        return [{c: {k: v for k, v in m.items() if "seconds" not in k}
                 for c, m in e["clients"].items()} for e in history]

    assert strip(resumed.history) == strip(reference.history)
    assert [e["traffic"] for e in resumed.history] == [e["traffic"] for e in reference.history]


def test_compare_tables_a_sampled_run_with_never_sampled_clients(tiny_config, tmp_path):
    # the last round evaluates clients that never trained (no training metrics): the table
    # still has its trainable parameters (of those that trained) and its traffic
    from fedlease.experiments.compare import run_comparison

    tiny_config.federation.clients_per_round = 2
    rows = run_comparison(tiny_config, ["fedit"], [1], tmp_path / "cmp", progress=False)
    assert rows[0]["trainable_params"] > 0 and rows[0]["download_per_client"] > 0
    assert (tmp_path / "cmp" / "accuracy_vs_bytes.png").exists()
