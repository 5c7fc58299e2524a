"""FedLEASE's allocation signals (federation.allocation): embedding, hybrid, late clients, and
the checks on the uploaded vector. Server side by hand-made replies; client side on the tiny
model."""

import numpy as np
import pytest
import torch

from fedlease.algorithms import ALGORITHMS, ClientInfo, Reply
from fedlease.algorithms.base import client_embedding
from fedlease.algorithms.clustering import (
    SIGNALS,
    embedding_distance_matrix,
    mean_offdiagonal,
)
from fedlease.algorithms.messages import EMBEDDING_KEY, Instruction, UploadSpec
from fedlease.algorithms.validation import accept_replies
from fedlease.configure import load_config
from fedlease.errors import ConfigError
from fedlease.model.lora import AdapterLayout

SHAPES = {"l0.query": (6, 5), "l0.value": (6, 5)}
DIM = 8


def make_server(allocation="embedding", warmup=0, rounds=3, n=4, noise=0.0):
    config = load_config(overrides={"federation": {
        "rounds": rounds, "warmup_rounds": warmup, "max_experts": 3,
        "allocation": allocation, "embedding_noise": noise}})
    clients = [ClientInfo(f"c{i}", 10) for i in range(n)]
    return ALGORITHMS["fedlease"](config, clients, SHAPES, DIM)


def embedding_reply(direction: int, wobble: float = 0.0) -> Reply:
    vector = torch.zeros(DIM)
    vector[direction] = 1.0
    vector[DIM - 1] = wobble
    return Reply({EMBEDDING_KEY: vector}, 10)


def lora_reply(sign: float, n: int = 10) -> Reply:
    arrays = {}
    for name, (d_in, d_out) in SHAPES.items():
        arrays[f"adapter.{name}.lora_A"] = torch.full((1, 4, d_in), 1.0)
        B = torch.full((1, d_out, 4), 0.1)
        B[0, :, 0] = sign
        arrays[f"adapter.{name}.lora_B"] = B
    return Reply(arrays, n)


def test_warmup_zero_must_use_the_embedding_signal():
    with pytest.raises(ConfigError, match=r"warmup_rounds.*\[1, rounds\).*lora-b"):
        load_config(overrides={"federation": {"warmup_rounds": 0, "allocation": "lora-b"}})
    with pytest.raises(ConfigError, match="allocation"):
        load_config(overrides={"federation": {"allocation": "cosine"}})
    with pytest.raises(ConfigError, match="embedding_noise"):
        load_config(overrides={"federation": {"embedding_noise": -1.0}})
    load_config(overrides={"federation": {"warmup_rounds": 0, "allocation": "embedding"}})


def test_lora_b_asks_for_no_profile():
    assert make_server("lora-b", warmup=1).configure_profile() == {}


def test_embedding_groups_clients_before_training_and_experts_start_from_the_init():
    server = make_server()
    profile = server.configure_profile()
    assert set(profile) == {"c0", "c1", "c2", "c3"}
    assert all(list(ins.upload.parts) == ["embedding"] for ins in profile.values())
    server.aggregate_profile({"c0": embedding_reply(0, 0.1), "c1": embedding_reply(1, 0.1),
                              "c2": embedding_reply(0, 0.2), "c3": embedding_reply(1)})
    assert server.cluster_of == {"c0": 0, "c1": 1, "c2": 0, "c3": 1}
    assert server.report()["signal"] == "embedding"
    for key, init in server.initial_lora.items():  # both experts: the common init
        assert torch.equal(server.experts[key], torch.cat([init, init]))
    fit = server.configure_fit(1)  # round 1 already trains the experts
    assert fit["c1"].layout.to_config()["router_slots"] == [0, 1, 1]
    assert fit["c1"].upload == UploadSpec((1,),
                                          ("lora_A", "lora_B", "router"))


def test_identical_embeddings_make_one_expert():
    server = make_server()
    server.aggregate_profile({f"c{i}": embedding_reply(2) for i in range(4)})
    assert server.num_experts == 1


def test_embedding_with_warmup_keeps_the_groups_and_averages_their_warmup_loras():
    server = make_server(warmup=1)
    server.aggregate_profile({"c0": embedding_reply(0), "c1": embedding_reply(1),
                              "c2": embedding_reply(0), "c3": embedding_reply(1)})
    assert server.cluster_of == {}  # the experts wait for the warm-up LoRAs
    # the B matrices disagree with the embeddings: the embedding signal decides
    server.aggregate_fit(1, {"c0": lora_reply(1.0, 10), "c1": lora_reply(1.0, 10),
                             "c2": lora_reply(-1.0, 30), "c3": lora_reply(-1.0, 10)})
    assert server.cluster_of == {"c0": 0, "c1": 1, "c2": 0, "c3": 1}
    B = server.experts["adapter.l0.query.lora_B"]
    assert torch.allclose(B[0, 0, 0], torch.tensor((1.0 * 10 - 1.0 * 30) / 40))
    assert torch.allclose(B[1, 0, 0], torch.tensor(0.0))


def test_hybrid_is_the_mean_of_the_two_distances_each_scaled_to_mean_one():
    b = np.array([[0, 2, 4], [2, 0, 6], [4, 6, 0]], dtype=float)  # mean off-diagonal 4
    e = np.array([[0, 0.1, 0.1], [0.1, 0, 0.4], [0.1, 0.4, 0]])  # mean off-diagonal 0.2
    assert mean_offdiagonal(b) == pytest.approx(4.0)
    expected = np.array([[0, 0.5, 0.75], [0.5, 0, 1.75], [0.75, 1.75, 0]])
    assert np.allclose(SIGNALS["hybrid"].distance(b, e, [4.0, 0.2]), expected)


def test_embedding_distance_is_one_minus_cosine():
    d = embedding_distance_matrix([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]),
                                   torch.tensor([-2.0, 0.0])])
    assert d[0, 1] == pytest.approx(1 - 2 ** -0.5)
    assert d[0, 2] == pytest.approx(2.0)
    assert np.allclose(np.diag(d), 0.0)


def test_a_late_client_uploads_its_embedding_and_joins_the_nearest_cluster():
    server = make_server()
    server.aggregate_profile({"c0": embedding_reply(0), "c1": embedding_reply(1),
                              "c2": embedding_reply(0, 0.3)})  # c3 missed the profile
    assert "c3" not in server.cluster_of
    fit = server.configure_fit(1, first_time=["c3"])
    assert list(fit["c3"].upload.parts) == ["lora_A", "lora_B", "embedding"]
    assert fit["c3"].layout.to_config()["router_slots"] is None  # trains a warm-up LoRA
    late = lora_reply(1.0)
    late.arrays[EMBEDDING_KEY] = embedding_reply(1, 0.2).arrays[EMBEDDING_KEY]
    server.aggregate_fit(1, {"c3": late})
    assert server.cluster_of["c3"] == server.cluster_of["c1"]
    assert list(server.configure_fit(2)["c3"].upload.parts) == [
        "lora_A", "lora_B", "router"]


def test_a_late_client_under_hybrid_joins_by_both_signals():
    server = make_server("hybrid", warmup=1)
    server.aggregate_profile({"c0": embedding_reply(0), "c1": embedding_reply(1),
                              "c2": embedding_reply(0)})
    server.aggregate_fit(1, {"c0": lora_reply(1.0), "c1": lora_reply(-1.0),
                             "c2": lora_reply(1.0)})
    assert server.cluster_of == {"c0": 0, "c1": 1, "c2": 0}
    late = lora_reply(-1.0)
    late.arrays[EMBEDDING_KEY] = embedding_reply(1).arrays[EMBEDDING_KEY]
    server.aggregate_fit(2, {"c3": late})
    assert server.cluster_of["c3"] == 1


@pytest.mark.parametrize("bad, reason", [
    (torch.zeros(DIM + 1), "shape"),
    (torch.full((DIM,), float("nan")), "NaN"),
    (torch.full((DIM,), 1e3), "norm"),
    (torch.zeros(DIM, dtype=torch.float64), "dtype"),
])
def test_the_server_rejects_a_bad_embedding(bad, reason):
    server = make_server()
    profile = server.configure_profile()
    replies = {"c0": embedding_reply(0), "c1": Reply({EMBEDDING_KEY: bad}, 10)}
    accepted, rejected = accept_replies(server, 0, profile, replies)
    assert set(accepted) == {"c0"}
    assert reason in rejected["c1"]


class FakeTrainer:
    def __init__(self, vector):
        self.vector = vector

    def mean_representation(self):
        return self.vector.clone()


def test_client_embedding_is_unit_length_plus_seeded_noise_of_the_chosen_scale():
    trainer = FakeTrainer(torch.arange(1.0, 401.0))
    def ask(noise):
        return Instruction({}, upload=UploadSpec((), ("embedding",), noise), seed=3)

    clean = client_embedding(trainer, ask(0.0))
    assert clean.norm() == pytest.approx(1.0)
    noisy = client_embedding(trainer, ask(0.05))
    again = client_embedding(trainer, ask(0.05))
    assert torch.equal(noisy, again)
    assert (noisy - clean).std().item() == pytest.approx(0.05, rel=0.15)


def test_mean_representation_differs_by_task_and_ignores_the_adapters(tiny_config):
    from fedlease.tasks.loading import build_trainers, load_clients

    trainers = build_trainers(tiny_config, load_clients(tiny_config))
    vectors = {cid: t.mean_representation() for cid, t in trainers.items()}
    distance = embedding_distance_matrix(list(vectors.values()))
    tasks = [cid.split("-")[0] for cid in vectors]
    same = [distance[i, j] for i in range(4) for j in range(4) if i != j and tasks[i] == tasks[j]]
    other = [distance[i, j] for i in range(4) for j in range(4) if tasks[i] != tasks[j]]
    assert max(same) < min(other)
    # with a large adapter loaded, the representation is still the frozen model's
    trainer = trainers["colors-0"]
    model = trainer.model
    layout = AdapterLayout()
    big = {}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        big[f"adapter.{name}.lora_A"] = torch.ones(1, 4, d_in)
        big[f"adapter.{name}.lora_B"] = torch.ones(1, d_out, 4)
    model.load_state({**big, **trainer.new_head(0)}, layout)
    assert torch.allclose(trainer.mean_representation(), vectors["colors-0"], atol=1e-6)
    assert model.adapters[next(iter(model.adapters))].layout == layout  # restored


@pytest.mark.parametrize("allocation, warmup", [("embedding", 0), ("hybrid", 1)])
def test_runs_recover_the_planted_tasks(tiny_config, allocation, warmup):
    from fedlease.reporting.summary import clustering_ari
    from fedlease.transports.simulator import run_simulation

    tiny_config.federation.allocation = allocation
    tiny_config.federation.warmup_rounds = warmup
    tiny_config.federation.rounds = 2
    result = run_simulation(tiny_config, None, progress=False)
    assert result.report["signal"] == allocation
    assert clustering_ari(result.tasks, result.report["assignment"]) == 1.0
    assert len(result.history) == 2
