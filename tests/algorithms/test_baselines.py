"""The server and client message semantics of the baselines and FedLEASE's ablations, driven by
hand-made replies and a stand-in trainer (no model needed)."""

import pytest
import torch

from fedlease.algorithms import ALGORITHMS, ClientInfo, Reply
from fedlease.algorithms.ifca_lora import ChosenCluster, pick_lowest
from fedlease.algorithms.messages import UploadSpec, select_upload
from fedlease.configure import load_config
from fedlease.errors import ConfigError

SHAPES = {"l0.query": (6, 5), "l0.value": (6, 5)}
A_KEY, B_KEY = "adapter.l0.query.lora_A", "adapter.l0.query.lora_B"


def make_server(name, sizes=(10, 30), **federation):
    # the FedLEASE ablations on the paper's B-matrix allocation (synthetic warm-up LoRAs)
    config = load_config(overrides={"federation": {"algorithm": name, "rounds": 3,
                                                   "warmup_rounds": 1, "max_experts": 3,
                                                   "allocation": "lora-b", **federation}})
    clients = [ClientInfo(f"c{i}", n) for i, n in enumerate(sizes)]
    return ALGORITHMS[name](config, clients, SHAPES)


def filled(state, value):
    return {k: torch.full_like(v, value) for k, v in state.items()}


def train_round(server, rnd, values, local_states=None):
    """Each client installs its download, 'trains' by setting its adapters to ``values[cid]``
    (per expert e: value + e), uploads what was asked; returns replies and new local states."""
    fit = server.configure_fit(rnd)
    replies, states = {}, {}
    for cid, ins in fit.items():
        state = server.client.install(ins, (local_states or {}).get(cid, {}))
        trained = {k: torch.stack([torch.full_like(v[e], values[cid] + e)
                                   for e in range(v.shape[0])]) for k, v in state.items()}
        states[cid] = trained
        n = server.clients[server.client_index[cid]].num_examples
        replies[cid] = Reply(select_upload(trained, ins.upload), n)
    server.aggregate_fit(rnd, replies)
    return replies, states


def test_local_uploads_and_receives_nothing_after_the_common_init():
    server = make_server("local")
    first = server.configure_fit(1)
    assert all(ins.upload is None for ins in first.values())
    assert torch.equal(first["c0"].arrays[A_KEY], first["c1"].arrays[A_KEY])
    replies, states = train_round(server, 1, {"c0": 1.0, "c1": 2.0})
    assert all(r.arrays == {} for r in replies.values())
    second = server.configure_fit(2)
    assert second["c0"].arrays == {}
    assert torch.equal(server.client.install(second["c0"], states["c0"])[A_KEY],
                       states["c0"][A_KEY])


def test_fedit_averages_A_and_B_weighted_by_examples():
    server = make_server("fedit")
    train_round(server, 1, {"c0": 1.0, "c1": 5.0})
    down = server.configure_fit(2)["c0"].arrays
    assert torch.allclose(down[A_KEY], torch.full((1, 4, 6), 4.0))  # (1*10 + 5*30) / 40
    assert torch.allclose(down[B_KEY], torch.full((1, 5, 4), 4.0))


def test_ffa_lora_freezes_A_and_shares_only_B():
    server = make_server("ffa-lora")
    first = server.configure_fit(1)
    assert first["c0"].layout.to_config()["train_A"] is False
    assert first["c0"].upload == UploadSpec((0,), ("lora_B",))
    init_A = first["c0"].arrays[A_KEY].clone()
    replies, states = train_round(server, 1, {"c0": 1.0, "c1": 3.0})
    assert all(B_KEY in r.arrays and A_KEY not in r.arrays for r in replies.values())
    second = server.configure_fit(2)
    assert set(second["c0"].arrays) == {k for k in first["c0"].arrays if k.endswith("lora_B")}
    # the A the client kept is never replaced (a real training step leaving it unchanged is
    # checked in tests/tasks/test_classification.py)
    installed = server.client.install(second["c0"], states["c0"])
    assert torch.equal(installed[A_KEY], states["c0"][A_KEY])
    assert not torch.equal(installed[A_KEY], init_A)  # the stand-in trainer did change it
    assert torch.allclose(installed[B_KEY], torch.full((1, 5, 4), 2.5))


def test_fedsa_lora_averages_A_and_never_receives_B():
    server = make_server("fedsa-lora")
    replies, states = train_round(server, 1, {"c0": 1.0, "c1": 3.0})
    assert all(not any(k.endswith("lora_B") for k in r.arrays) for r in replies.values())
    down = server.configure_fit(2)["c1"]
    assert not any(k.endswith("lora_B") for k in down.arrays)
    installed = server.client.install(down, states["c1"])
    assert torch.allclose(installed[A_KEY], torch.full((1, 4, 6), 2.5))
    assert torch.equal(installed[B_KEY], states["c1"][B_KEY])  # B stays the client's own


def test_feddpa_shares_the_global_expert_and_keeps_the_personal_one():
    server = make_server("feddpa")
    first = server.configure_fit(1)["c0"]
    assert first.layout.to_config()["num_experts"] == 2
    assert first.layout.to_config()["trainable"] == [0, 1]
    assert first.layout.to_config()["router_slots"] is None  # the two adapters are summed
    assert first.upload == UploadSpec((0,), ("lora_A", "lora_B"))
    assert first.arrays[A_KEY].shape == (2, 4, 6)
    replies, states = train_round(server, 1, {"c0": 1.0, "c1": 5.0})
    assert replies["c0"].arrays[A_KEY].shape == (1, 4, 6)
    installed = server.client.install(server.configure_fit(2)["c0"], states["c0"])
    assert torch.allclose(installed[A_KEY][0], torch.full((4, 6), 4.0))  # global: averaged
    assert torch.equal(installed[A_KEY][1], states["c0"][A_KEY][1])  # personal: kept


def test_ifca_aggregates_per_cluster_picked():
    server = make_server("ifca-lora", sizes=(10, 30, 10))
    down = server.configure_fit(1)
    assert down["c0"].arrays[A_KEY].shape == (3, 4, 6)  # K = max_experts cluster LoRAs
    before = server.clusters[A_KEY].clone()
    replies = {}
    for cid, value, cluster in (("c0", 1.0, 2), ("c1", 3.0, 2), ("c2", 7.0, 0)):
        lora = {k: torch.full_like(v[:1], value) for k, v in down[cid].arrays.items()}
        n = server.clients[server.client_index[cid]].num_examples
        replies[cid] = Reply(lora, n, extra=ChosenCluster(cluster))
    server.aggregate_fit(1, replies)
    A = server.clusters[A_KEY]
    assert torch.allclose(A[2], torch.full((4, 6), 2.5))
    assert torch.allclose(A[0], torch.full((4, 6), 7.0))
    assert torch.equal(A[1], before[1])  # nobody picked cluster 1
    assert server.report()["assignment"] == {"c0": 2, "c1": 2, "c2": 0}
    evaluate = server.configure_evaluate(1)
    # each client is evaluated with the cluster LoRA it picked, cluster 2 for c0 and c1
    for cid, cluster in (("c0", 2), ("c1", 2), ("c2", 0)):
        installed = server.client.install(evaluate[cid], {})
        assert torch.equal(installed[A_KEY], A[cluster : cluster + 1])
        assert torch.equal(installed[B_KEY], server.clusters[B_KEY][cluster : cluster + 1])


class LossByB:
    """A stand-in trainer whose loss is the mean of the first B matrix; training adds 1 to it."""

    num_train = 10

    def new_head(self, seed):
        return {"head.weight": torch.zeros(2, 3), "head.bias": torch.zeros(2)}

    def train_loss(self, state, layout):
        assert state[B_KEY].shape[0] == 1
        return float(state[B_KEY].mean())

    def train(self, state, layout, seed):
        return {**state, B_KEY: state[B_KEY] + 1}, {"train_loss": 0.0}


def test_ifca_client_trains_and_uploads_the_lowest_loss_cluster():
    server = make_server("ifca-lora")
    server.clusters[B_KEY] = torch.stack([torch.full((5, 4), v) for v in (0.5, -2.0, 1.0)])
    ins = server.configure_fit(2)["c0"]
    reply, state = server.client.fit(ins, {}, LossByB())
    assert reply.extra == ChosenCluster(1) and reply.metrics["cluster_loss"] == -2.0
    assert torch.allclose(reply.arrays[B_KEY], torch.full((1, 5, 4), -1.0))
    assert "head.weight" in state and "head.weight" not in reply.arrays


def test_pick_lowest_breaks_only_exact_ties_at_random():
    assert pick_lowest([0.3, 0.1, 0.2], torch.Generator().manual_seed(0)) == 1
    picks = {pick_lowest([1.0, 1.0, 1.0], torch.Generator().manual_seed(s)) for s in range(30)}
    assert picks == {0, 1, 2}


def warmup_replies(sizes):
    """Two clear groups of B directions, as FedLEASE's clustering expects."""
    replies = {}
    for i, n in enumerate(sizes):
        direction = 5.0 if i % 2 == 0 else -5.0
        arrays = {}
        for name, (d_in, d_out) in SHAPES.items():
            B = torch.ones(1, d_out, 4)
            B[0, :, 0] = direction
            arrays[f"adapter.{name}.lora_A"] = torch.ones(1, 4, d_in)
            arrays[f"adapter.{name}.lora_B"] = B
        replies[f"c{i}"] = Reply(arrays, n)
    return replies


def test_fixed_top_m_router_has_one_slot_per_expert():
    sizes = (10,) * 6
    server = make_server("fedlease-fixed-top-m", sizes=sizes)
    server.aggregate_fit(1, warmup_replies(sizes))
    assert server.num_experts == 2
    ins = server.configure_fit(2)["c1"]
    assert ins.layout.to_config()["router_slots"] == [0, 1]
    assert ins.layout.to_config()["top_k"] == 2
    assert ins.arrays["adapter.l0.query.router"].shape == (2, 6)


def test_no_cluster_assigns_at_random_with_the_same_cluster_sizes():
    sizes = (10,) * 8
    full, ablated = make_server("fedlease", sizes=sizes), make_server("fedlease-no-cluster",
                                                                      sizes=sizes)
    full.aggregate_fit(1, warmup_replies(sizes))
    ablated.aggregate_fit(1, warmup_replies(sizes))
    labels = list(full.cluster_of.values())
    shuffled = list(ablated.cluster_of.values())
    assert sorted(shuffled) == sorted(labels) and shuffled != labels
    assert ablated.num_experts == full.num_experts


def test_warmup_is_checked_only_for_algorithms_that_use_it():
    load_config(overrides={"federation": {"algorithm": "fedit", "rounds": 2,
                                          "warmup_rounds": 5}})
    with pytest.raises(ConfigError, match="warmup_rounds"):
        load_config(overrides={"federation": {"algorithm": "fedlease-no-cluster", "rounds": 2,
                                              "warmup_rounds": 5}})
