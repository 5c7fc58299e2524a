"""The server side of FedLEASE driven by hand-made replies (no model needed)."""

import torch

from fedlease.algorithms import ALGORITHMS, ClientInfo, Reply
from fedlease.algorithms.messages import UploadSpec, select_upload
from fedlease.configure import load_config

SHAPES = {"l0.query": (6, 5), "l0.value": (6, 5)}


def make_server(sizes=(10, 10, 30, 30), warmup=1, rounds=3):
    # the paper's B-matrix allocation, fed with synthetic warm-up LoRAs (lora_reply)
    config = load_config(overrides={"federation": {"rounds": rounds, "warmup_rounds": warmup,
                                                   "max_experts": 3, "allocation": "lora-b"}})
    clients = [ClientInfo(f"c{i}", n) for i, n in enumerate(sizes)]
    return ALGORITHMS["fedlease"](config, clients, SHAPES)


def lora_reply(direction: float, value: float, n: int) -> Reply:
    arrays = {}
    for name, (d_in, d_out) in SHAPES.items():
        B = torch.full((1, d_out, 4), value)
        B[0, :, 0] = direction  # clients of a group share the direction of their B
        arrays[f"adapter.{name}.lora_A"] = torch.full((1, 4, d_in), value)
        arrays[f"adapter.{name}.lora_B"] = B
    return Reply(arrays, n)


def test_warmup_sends_common_init_then_nothing_and_uploads_only_at_the_end():
    server = make_server(warmup=2, rounds=4)
    first, second = server.configure_fit(1), server.configure_fit(2)
    inits = [ins.arrays for ins in first.values()]
    assert all(torch.equal(a["adapter.l0.query.lora_A"], inits[0]["adapter.l0.query.lora_A"])
               for a in inits)
    assert all(ins.upload is None for ins in first.values())
    assert all(ins.arrays == {} for ins in second.values())
    assert all(list(ins.upload.parts) == ["lora_A", "lora_B"] for ins in second.values())


def test_experts_start_as_weighted_mean_of_their_cluster():
    server = make_server()
    replies = {"c0": lora_reply(5.0, 1.0, 10), "c1": lora_reply(5.0, 3.0, 10),
               "c2": lora_reply(-5.0, 2.0, 30), "c3": lora_reply(-5.0, 4.0, 10)}
    server.configure_fit(1)
    server.aggregate_fit(1, replies)
    assert server.cluster_of == {"c0": 0, "c1": 0, "c2": 1, "c3": 1}
    A = server.experts["adapter.l0.query.lora_A"]
    assert A.shape == (2, 4, 6)
    assert torch.allclose(A[0], torch.full((4, 6), 2.0))  # (1*10 + 3*10) / 20
    assert torch.allclose(A[1], torch.full((4, 6), 2.5))  # (2*30 + 4*10) / 40
    ins = server.configure_fit(2)
    assert ins["c2"].layout.to_config()["router_slots"] == [0, 1, 1]
    assert ins["c2"].upload == UploadSpec((1,),
                                          ("lora_A", "lora_B", "router"))
    assert ins["c0"].arrays["adapter.l0.query.router"].shape == (3, 6)


def test_phase3_aggregation_touches_only_each_cluster_expert():
    server = make_server()
    server.aggregate_fit(1, {"c0": lora_reply(5.0, 1.0, 10), "c1": lora_reply(5.0, 1.0, 10),
                             "c2": lora_reply(-5.0, 2.0, 30), "c3": lora_reply(-5.0, 2.0, 30)})
    before = {k: v.clone() for k, v in server.experts.items()}
    down = server.configure_fit(2)
    replies = {}
    for cid, value in (("c0", 7.0), ("c1", 9.0)):  # only cluster 0 answers
        state = {k: v.clone() for k, v in down[cid].arrays.items()}
        state["adapter.l0.query.lora_A"][0] = value
        state["adapter.l0.query.router"] = torch.full((3, 6), value)
        replies[cid] = Reply(select_upload(state, down[cid].upload), 10)
    server.aggregate_fit(2, replies)
    A = server.experts["adapter.l0.query.lora_A"]
    assert torch.allclose(A[0], torch.full((4, 6), 8.0))
    assert torch.equal(A[1], before["adapter.l0.query.lora_A"][1])
    assert torch.allclose(server.routers[0]["adapter.l0.query.router"], torch.full((3, 6), 8.0))
    report = server.report()
    assert report["num_experts"] == 2 and report["assignment"]["c3"] == 1


def test_phase3_means_are_weighted_by_client_sizes_inside_a_cluster():
    """Cluster 0 holds a client of 10 and one of 30 examples: its expert and router are
    (10 * 1 + 30 * 5) / 40 = 4, not the plain mean 3."""
    server = make_server(sizes=(10, 30, 20, 20))
    server.aggregate_fit(1, {"c0": lora_reply(5.0, 1.0, 10), "c1": lora_reply(5.0, 1.0, 30),
                             "c2": lora_reply(-5.0, 2.0, 20), "c3": lora_reply(-5.0, 2.0, 20)})
    assert server.cluster_of == {"c0": 0, "c1": 0, "c2": 1, "c3": 1}
    down = server.configure_fit(2)
    replies = {}
    for cid, value, n in (("c0", 1.0, 10), ("c1", 5.0, 30)):
        state = {k: v.clone() for k, v in down[cid].arrays.items()}
        state["adapter.l0.query.lora_A"][0] = value
        state["adapter.l0.query.lora_B"][0] = -value
        state["adapter.l0.query.router"] = torch.full((3, 6), value)
        replies[cid] = Reply(select_upload(state, down[cid].upload), n)
    server.aggregate_fit(2, replies)
    assert torch.allclose(server.experts["adapter.l0.query.lora_A"][0], torch.full((4, 6), 4.0))
    assert torch.allclose(server.experts["adapter.l0.query.lora_B"][0], torch.full((5, 4), -4.0))
    assert torch.allclose(server.routers[0]["adapter.l0.query.router"], torch.full((3, 6), 4.0))


def test_client_missing_at_allocation_joins_the_nearest_cluster_later():
    server = make_server(rounds=4)
    server.aggregate_fit(1, {"c0": lora_reply(5.0, 1.0, 10), "c1": lora_reply(5.0, 1.0, 10),
                             "c2": lora_reply(-5.0, 2.0, 30)})  # c3 dropped out
    assert "c3" not in server.cluster_of
    assert server.report()["clients"] == ["c0", "c1", "c2"]
    down = server.configure_fit(2)
    # c3 keeps training its own warm-up LoRA and uploads it; the others get the experts
    assert down["c3"].arrays == {} and down["c3"].layout.to_config()["num_experts"] == 1
    assert down["c3"].upload == UploadSpec((0,), ("lora_A", "lora_B"))
    experts_before = {k: v.clone() for k, v in server.experts.items()}
    server.aggregate_fit(2, {"c3": lora_reply(-5.0, 3.0, 30)})
    assert server.cluster_of["c3"] == server.cluster_of["c2"]
    # a late warm-up LoRA is not averaged into the experts
    assert all(torch.equal(server.experts[k], v) for k, v in experts_before.items())
    down = server.configure_fit(3)
    assert down["c3"].layout.to_config()["router_slots"] == [0, 1, 1]
    assert down["c3"].arrays["adapter.l0.query.lora_A"].shape == (2, 4, 6)


def test_a_client_that_never_trained_gets_the_initial_tensors_too():
    server = make_server(warmup=2, rounds=4)
    down = server.configure_fit(2, first_time=["c1"])
    assert down["c0"].arrays == {}
    assert torch.equal(down["c1"].arrays["adapter.l0.query.lora_A"],
                       server.initial_lora["adapter.l0.query.lora_A"])
