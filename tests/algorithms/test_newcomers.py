"""The newcomer protocol (Algorithm.newcomer, AlgorithmClient.onboard): one protocol and one
step budget for every algorithm, driven with a stand-in trainer (no model needed)."""

import pytest
import torch

from fedlease.algorithms import ALGORITHMS, ClientInfo, Reply
from fedlease.algorithms.messages import EMBEDDING_KEY
from fedlease.configure import load_config

SHAPES = {"l0.query": (6, 5), "l0.value": (6, 5)}
A_KEY, B_KEY = "adapter.l0.query.lora_A", "adapter.l0.query.lora_B"
GROUPS = {"c0": 0, "c1": 0, "c2": 1, "c3": 1}


def make_server(name, allocation="embedding", warmup=0):
    config = load_config(overrides={"federation": {
        "algorithm": name, "rounds": 3, "warmup_rounds": warmup, "max_experts": 3,
        "allocation": allocation}})
    return ALGORITHMS[name](config, [ClientInfo(cid, 10) for cid in GROUPS], SHAPES)


def direction(group: int) -> torch.Tensor:
    vector = torch.zeros(6)
    vector[group] = 1.0
    return vector


class Recorder:
    """A stand-in trainer: its representation is ``vector``; the loss of a state is the mean
    of its first B matrix; training adds 1 to every B and records its step budget."""

    num_train = 10

    def __init__(self, vector=None):
        self.vector = vector if vector is not None else direction(0)
        self.budgets = []

    def new_head(self, seed):
        return {"head.weight": torch.zeros(2, 3), "head.bias": torch.zeros(2)}

    def mean_representation(self):
        return self.vector

    def embedding(self, seed, noise=0.0):
        return self.vector / self.vector.norm()

    def train_loss(self, state, layout):
        return float(state[B_KEY].mean())

    def train(self, state, layout, seed, max_steps=None):
        self.budgets.append(max_steps)
        trained = {k: v + 1 if k.endswith("lora_B") else v for k, v in state.items()}
        return trained, {"train_loss": 0.0}


def clustered_fedlease():
    """FedLEASE (embedding allocation, no warm-up) with clients c0, c1 / c2, c3 in two
    clusters by their embeddings."""
    server = make_server("fedlease")
    server.aggregate_profile({cid: Reply({EMBEDDING_KEY: direction(g)}, 10)
                              for cid, g in GROUPS.items()})
    return server


def onboard(server, trainer, steps):
    request = server.newcomer_request(steps)
    signal = server.client.newcomer_signal(request, trainer) if request is not None else None
    ins = server.newcomer(steps, signal)
    return ins, server.client.onboard(ins, trainer)


@pytest.mark.parametrize("name", ["fedlease", "ifca-lora", "fedit", "local", "fedalt"])
@pytest.mark.parametrize("steps", [0, 7])
def test_every_algorithm_gives_a_newcomer_the_same_budget(name, steps):
    server = clustered_fedlease() if name == "fedlease" else make_server(name)
    trainer = Recorder()
    ins, state = onboard(server, trainer, steps)
    assert ins.newcomer_steps == steps and ins.head_seed == server.config.federation.seed
    assert trainer.budgets == ([steps] if steps else [])  # one local update, that budget
    assert "head.weight" in state and A_KEY in state


@pytest.mark.parametrize("group", [0, 1])
def test_fedlease_places_a_newcomer_by_its_embedding(group):
    server = clustered_fedlease()
    request = server.newcomer_request(5)
    assert request.layout is None and request.upload.embedding  # a profile: no training
    ins, state = onboard(server, Recorder(direction(group) + 0.1), 5)
    cluster = server.cluster_of["c0" if group == 0 else "c2"]
    assert ins.layout.trainable == (cluster,) and ins.layout.router_slots is not None
    router_key = "adapter.l0.query.router"
    assert torch.equal(ins.arrays[router_key], server.routers[cluster][router_key])
    assert torch.equal(ins.arrays[A_KEY], server.experts[A_KEY])  # all K experts


def test_fedlease_lora_b_newcomer_is_placed_by_the_warmup_lora_it_trains_in_its_budget():
    server = make_server("fedlease", allocation="lora-b", warmup=1)
    replies = {}
    for cid, g in GROUPS.items():
        B = torch.zeros(1, 5, 4)
        B[0, :, 0] = 5.0 if g == 0 else -5.0
        replies[cid] = Reply({f"adapter.{n}.lora_{p}": (B if p == "B" else torch.ones(1, 4, 6))
                              for n in SHAPES for p in "AB"}, 10)
    server.aggregate_fit(1, replies)
    request = server.newcomer_request(3)
    assert request.newcomer_steps == 3 and set(request.upload.parts) == {"lora_A", "lora_B"}

    class TowardsGroup1(Recorder):
        def train(self, state, layout, seed, max_steps=None):
            self.budgets.append(max_steps)
            return {k: v - 5 * torch.nn.functional.one_hot(torch.tensor(0), 4).float()
                    if k.endswith("lora_B") else v for k, v in state.items()}, {}

    trainer = TowardsGroup1()
    ins, _ = onboard(server, trainer, 3)
    assert ins.layout.trainable == (server.cluster_of["c2"],)
    assert trainer.budgets == [3, 3]  # the warm-up LoRA for its signal, then its adaptation


def test_a_federation_client_that_never_trained_keeps_its_cluster():
    server = clustered_fedlease()
    ins = server.newcomer(2, client_id="c3")
    assert ins.layout.trainable == (server.cluster_of["c3"],)
    assert ins.seed == server.client_seed(0, "c3")


def test_fedit_newcomer_starts_from_the_global_lora():
    server = make_server("fedit")
    server.shared = {A_KEY: torch.full((1, 4, 6), 3.0), B_KEY: torch.full((1, 5, 4), 2.0)}
    ins, state = onboard(server, Recorder(), 0)
    assert torch.equal(state[A_KEY], server.shared[A_KEY])
    assert torch.equal(state[B_KEY], server.shared[B_KEY])


def test_local_newcomer_starts_from_the_common_init():
    server = make_server("local")
    ins, state = onboard(server, Recorder(), 0)
    assert torch.equal(state[A_KEY], server.initial_state()[A_KEY])
    assert state[B_KEY].eq(0).all()


def test_ifca_newcomer_picks_the_lowest_loss_cluster_then_adapts_it():
    server = make_server("ifca-lora")
    server.clusters[B_KEY] = torch.stack([torch.full((5, 4), v) for v in (0.5, -2.0, 1.0)])
    ins, state = onboard(server, Recorder(), 4)
    assert ins.extra.cluster is None  # the newcomer picks, by its own data
    assert torch.allclose(state[B_KEY], torch.full((1, 5, 4), -1.0))  # cluster 1, trained
