"""The server's check of client uploads: every kind of bad update is rejected, by client, and
leaves the server state as if that client had not answered."""

import logging

import pytest
import torch

from fedlease.algorithms import ALGORITHMS, ClientInfo, Reply
from fedlease.algorithms.messages import UploadSpec, select_upload
from fedlease.algorithms.validation import accept_replies
from fedlease.configure import load_config

SHAPES = {"l0.query": (6, 5), "l0.value": (6, 5)}
SIZES = (10, 10, 30, 30)


def make_server(max_norm=100.0):
    # the paper's B-matrix allocation: the replies below are synthetic warm-up LoRAs
    config = load_config(overrides={"federation": {"rounds": 4, "warmup_rounds": 1,
                                                   "max_experts": 3, "allocation": "lora-b",
                                                   "max_update_norm": max_norm}})
    clients = [ClientInfo(f"c{i}", n) for i, n in enumerate(SIZES)]
    return ALGORITHMS["fedlease"](config, clients, SHAPES)


def honest_replies(server, rnd, scale=1.0):
    """What honest clients upload: their full state (as the server sent it, moved a little),
    cut down by ``select_upload`` to what the instruction asked for."""
    replies = {}
    for i, (cid, ins) in enumerate(server.configure_fit(rnd).items()):
        state = {}
        for name, (d_in, d_out) in SHAPES.items():
            group = i // 2  # c0, c1 and c2, c3 share the direction of their B
            E = ins.layout.to_config()["num_experts"]
            B = torch.full((E, d_out, 4), 0.1 * scale)
            B[:, :, group] = 1.0 + i * 0.01
            state[f"adapter.{name}.lora_A"] = torch.full((E, 4, d_in), 0.2 * scale + i * 0.01)
            state[f"adapter.{name}.lora_B"] = B
            if ins.layout.to_config()["router_slots"] is not None:
                slots = len(ins.layout.to_config()["router_slots"])
                state[f"adapter.{name}.router"] = torch.full((slots, d_in), 0.3 + i * 0.01)
        upload = select_upload(state, ins.upload)
        replies[cid] = Reply(upload, SIZES[i], {"train_loss": 0.5})
    return replies


def server_after_round_one():
    server = make_server()
    server.aggregate_fit(1, honest_replies(server, 1))
    return server


def corrupt(reply: Reply, how: str) -> Reply:
    arrays = dict(reply.arrays)
    key = sorted(arrays)[0]
    n, metrics = reply.num_examples, dict(reply.metrics)
    if how == "missing key":
        del arrays[key]
    elif how == "extra key":
        arrays["head.weight"] = torch.zeros(2, 5)
    elif how == "wrong shape":
        arrays[key] = torch.zeros(arrays[key].shape[0] + 1, *arrays[key].shape[1:])
    elif how == "wrong dtype":
        arrays[key] = arrays[key].double()
    elif how == "not a tensor":
        arrays[key] = arrays[key].tolist()
    elif how == "nan":
        arrays[key] = arrays[key].clone()
        arrays[key].view(-1)[0] = float("nan")
    elif how == "inf":
        arrays[key] = arrays[key].clone()
        arrays[key].view(-1)[0] = float("inf")
    elif how == "huge norm":
        arrays[key] = arrays[key] * 1e4
    elif how == "zero examples":
        n = 0
    elif how == "lied about examples":
        n = n * 1000
    elif how == "float examples":
        n = float(n)
    elif how == "bad metrics":
        metrics["train_loss"] = float("nan")
    else:  # pragma: no cover
        raise AssertionError(how)
    return Reply(arrays, n, metrics)


KINDS = ["missing key", "extra key", "wrong shape", "wrong dtype", "not a tensor", "nan", "inf",
         "huge norm", "zero examples", "lied about examples", "float examples", "bad metrics"]
REASONS = {"missing key": "missing", "extra key": "unexpected", "wrong shape": "shape",
           "wrong dtype": "dtype", "not a tensor": "dense tensor", "nan": "NaN",
           "inf": "infinite", "huge norm": "max_update_norm", "zero examples": "num_examples",
           "lied about examples": "declared", "float examples": "num_examples",
           "bad metrics": "metrics"}


def test_honest_replies_are_all_accepted():
    for rnd, server in ((1, make_server()), (2, server_after_round_one())):
        fit = server.configure_fit(rnd)
        accepted, rejected = accept_replies(server, rnd, fit, honest_replies(server, rnd))
        assert rejected == {} and set(accepted) == {"c0", "c1", "c2", "c3"}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_bad_update_is_rejected_and_the_round_goes_on(kind, caplog):
    """A bad upload from c1 in a mixture round: rejected with a reason, logged with its id, and
    the aggregate equals the one of a round that c1 simply missed."""
    server, reference = server_after_round_one(), server_after_round_one()
    fit = server.configure_fit(2)
    replies = honest_replies(server, 2)
    replies["c1"] = corrupt(replies["c1"], kind)
    with caplog.at_level(logging.WARNING, logger="fedlease.algorithms.validation"):
        accepted, rejected = accept_replies(server, 2, fit, replies)
    assert list(rejected) == ["c1"] and REASONS[kind] in rejected["c1"]
    assert "'c1'" in caplog.text and REASONS[kind] in caplog.text
    server.aggregate_fit(2, accepted)
    without_c1 = {cid: r for cid, r in honest_replies(reference, 2).items() if cid != "c1"}
    reference.aggregate_fit(2, without_c1)
    for key, value in reference.experts.items():
        assert torch.equal(server.experts[key], value)
    for mine, theirs in zip(server.routers, reference.routers, strict=True):
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_bad_warmup_upload_leaves_client_out_until_a_good_one_arrives():
    """c3's warm-up LoRA is rejected: the others are clustered without it; c3 keeps training
    its LoRA and joins a cluster with its next accepted upload."""
    server = make_server()
    fit = server.configure_fit(1)
    replies = honest_replies(server, 1)
    replies["c3"] = corrupt(replies["c3"], "nan")
    accepted, rejected = accept_replies(server, 1, fit, replies)
    assert list(rejected) == ["c3"]
    server.aggregate_fit(1, accepted)
    assert server.clustered == ["c0", "c1", "c2"] and "c3" not in server.cluster_of
    assert all(torch.isfinite(v).all() for v in server.experts.values())
    assert len(server.report()["distance"]) == 3
    fit = server.configure_fit(2)
    accepted, rejected = accept_replies(server, 2, fit, honest_replies(server, 2))
    assert rejected == {}
    server.aggregate_fit(2, accepted)
    assert server.cluster_of["c3"] == server.cluster_of["c2"]


def test_upload_when_none_was_asked_and_unknown_client_are_rejected():
    server = make_server()
    fit = server.configure_fit(1)  # warm-up round 1 of 1 uploads; make it a pure warm-up round
    fit["c0"].upload = None
    replies = honest_replies(server, 1)
    replies["intruder"] = replies["c2"]
    accepted, rejected = accept_replies(server, 1, fit, replies)
    assert set(rejected) == {"c0", "intruder"}
    assert "unexpected" in rejected["c0"] and "not asked" in rejected["intruder"]


def test_norm_bound_comes_from_the_config():
    server = make_server(max_norm=0.5)
    fit = server.configure_fit(1)
    _, rejected = accept_replies(server, 1, fit, honest_replies(server, 1))
    assert set(rejected) == {"c0", "c1", "c2", "c3"}
    assert all("federation.max_update_norm = 0.5" in r for r in rejected.values())


@pytest.mark.parametrize("extra", [None, {}, {"cluster": 3}, {"cluster": -1},
                                   {"cluster": 1.5}, {"cluster": True}, {"cluster": "1"},
                                   {"cluster": 1, "loss": 0.0}])
def test_ifca_reply_without_a_valid_cluster_is_rejected_on_arrival(extra):
    # IFCA's aggregation reads which cluster the client trained: a reply without it, or with
    # one that does not exist, is rejected with the tensors, not a crash in aggregation
    from fedlease.algorithms.ifca_lora import ChosenCluster

    config = load_config(overrides={"federation": {"algorithm": "ifca-lora", "rounds": 2,
                                                   "max_experts": 3}})
    clients = [ClientInfo(f"c{i}", n) for i, n in enumerate(SIZES)]
    server = ALGORITHMS["ifca-lora"](config, clients, SHAPES)
    fit = server.configure_fit(1)
    replies = {}
    for (cid, ins), n in zip(fit.items(), SIZES, strict=True):
        state = {key: value[:1] + 0.01 for key, value in ins.arrays.items()}
        replies[cid] = Reply(select_upload(state, ins.upload), n, extra=ChosenCluster(1))
    replies["c2"].extra = {"cluster": 2}  # the wire form, as it arrives over Flower
    replies["c0"].extra = extra
    accepted, rejected = accept_replies(server, 1, fit, replies)
    assert sorted(accepted) == ["c1", "c2", "c3"]
    assert "cluster" in rejected["c0"]
    server.aggregate_fit(1, accepted)
    assert server.cluster_of == {"c1": 1, "c2": 2, "c3": 1}


def test_algorithm_fields_round_trip_and_are_type_checked():
    from fedlease.algorithms.ifca_lora import AssignedCluster
    from fedlease.algorithms.messages import Instruction, read_fields
    from fedlease.errors import ProtocolError
    from fedlease.model.lora import AdapterLayout

    ins = Instruction({}, AdapterLayout.fedlease(2, 1), UploadSpec((1,), ("lora_B",), 0.5),
                      seed=7, head_seed=3, extra=AssignedCluster(None))
    assert Instruction.from_config({}, ins.to_config(), AssignedCluster) == ins
    assert read_fields(AssignedCluster, {"cluster": 2}, "x") == AssignedCluster(2)
    for bad in ({"cluster": 2.0}, {"cluster": "2"}, {}, [2]):
        with pytest.raises(ProtocolError, match="x"):
            read_fields(AssignedCluster, bad, "x")
    with pytest.raises(ProtocolError, match="unexpected"):
        read_fields(None, {"cluster": 2}, "x")
    with pytest.raises(ProtocolError, match="keys"):
        Instruction.from_config({}, {"layout": None}, None)


def test_upload_spec_round_trips_and_a_malformed_one_is_named():
    from fedlease.errors import ProtocolError

    spec = UploadSpec((1,), ("lora_A", "lora_B", "router"))
    assert UploadSpec.from_config(spec.to_config()) == spec and not spec.embedding
    assert UploadSpec.from_config(None) is None
    assert UploadSpec.from_config({"experts": [], "parts": ["embedding"],
                                   "embedding_noise": 0}).embedding
    for bad, field in (({"experts": [0]}, "upload spec"),
                       ({"experts": [-1], "parts": [], "embedding_noise": 0}, "experts"),
                       ({"experts": [True], "parts": [], "embedding_noise": 0}, "experts"),
                       ({"experts": [0], "parts": ["lora_C"], "embedding_noise": 0}, "parts"),
                       ({"experts": [0], "parts": [], "embedding_noise": -1}, "noise")):
        with pytest.raises(ProtocolError, match=field):
            UploadSpec.from_config(bad)
