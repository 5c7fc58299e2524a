"""The aggregation rules (federation.aggregation) on known values, and every averaging
algorithm combining its groups by the configured rule."""

import pytest
import torch

from fedlease.algorithms import ALGORITHMS, ClientInfo, Reply
from fedlease.algorithms.aggregation import (
    aggregate_uploads,
    aggregation_rule,
    coordinate_median,
    trimmed_mean,
    weighted_mean,
)
from fedlease.configure import load_config
from fedlease.errors import ConfigError

SHAPES = {"l0.query": (6, 5)}


def values(*xs):
    return [torch.tensor([x]) for x in xs]


def test_mean_is_weighted_by_examples_and_sums_in_client_order():
    tensors, weights = values(1.0, 2.0, 4.0), [1, 1, 2]
    assert weighted_mean(tensors, weights).item() == pytest.approx(11 / 4)
    # the exact sum the algorithms computed before the rules existed: bit-identical runs
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, 7, generator=gen) for _ in range(5)]
    weights = [10, 30, 7, 7, 90]
    total = float(sum(weights))
    assert torch.equal(weighted_mean(tensors, weights),
                       sum(t * (w / total) for t, w in zip(tensors, weights, strict=True)))


def test_median_is_coordinate_wise_unweighted_and_averages_the_middle_pair():
    a = torch.tensor([1.0, 10.0, -3.0])
    b = torch.tensor([2.0, -5.0, -3.0])
    c = torch.tensor([9.0, 0.0, -3.0])
    assert torch.equal(coordinate_median([a, b, c], [1, 1, 1000]),
                       torch.tensor([2.0, 0.0, -3.0]))
    # an even count: the mean of the two middle values; a tie stays the tied value
    d = torch.tensor([4.0, 0.0, -3.0])
    assert torch.equal(coordinate_median([a, b, c, d], [1] * 4),
                       torch.tensor([3.0, 0.0, -3.0]))
    assert coordinate_median(values(5.0, 5.0, 1.0, 5.0), [1] * 4).item() == 5.0


def test_trimmed_mean_drops_floor_fraction_at_each_end():
    xs = values(1.0, 2.0, 3.0, 4.0, 100.0)
    assert trimmed_mean(xs, [1] * 5, 0.2).item() == pytest.approx(3.0)  # 2, 3, 4
    assert trimmed_mean(xs, [1] * 5, 0.0).item() == pytest.approx(22.0)  # plain mean
    assert trimmed_mean(xs, [1] * 5, 0.19).item() == pytest.approx(22.0)  # floor(0.95) = 0
    assert trimmed_mean(xs, [1] * 5, 0.49).item() == pytest.approx(3.0)  # only the middle
    assert trimmed_mean(values(7.0, 7.0, 7.0), [1] * 3, 0.4).item() == 7.0  # ties
    with pytest.raises(ValueError, match="leaves no value"):
        trimmed_mean(values(1.0, 2.0), [1, 1], 0.5)


@pytest.mark.parametrize("name", ["median", "trimmed-mean"])
def test_a_minority_outlier_is_bounded_by_the_honest_values(name):
    # 4 honest clients in [0.9, 1.2], one uploading 1e6 (or -1e6): the robust rules stay in
    # the honest range, the mean is dragged away
    rule = aggregation_rule(name, trim_fraction=0.2)
    honest = values(0.9, 1.0, 1.1, 1.2)
    for outlier in (1e6, -1e6):
        combined = rule([*honest, torch.tensor([outlier])], [1] * 5).item()
        assert 0.9 <= combined <= 1.2
    assert abs(aggregation_rule("mean")([*honest, torch.tensor([1e6])], [1] * 5).item()) > 1e5


def test_aggregate_uploads_combines_every_key():
    uploads = [{"a": torch.tensor([1.0]), "b": torch.tensor([0.0])},
               {"a": torch.tensor([3.0]), "b": torch.tensor([10.0])},
               {"a": torch.tensor([2.0]), "b": torch.tensor([1.0])}]
    out = aggregate_uploads(uploads, [1, 1, 1], coordinate_median)
    assert out == {"a": torch.tensor([2.0]), "b": torch.tensor([1.0])}


def test_trim_fraction_that_leaves_no_client_and_unknown_rule_are_config_errors():
    with pytest.raises(ConfigError, match=r"federation.trim_fraction = 0.5: expected"):
        load_config(overrides={"federation": {"trim_fraction": 0.5}})
    with pytest.raises(ConfigError, match=r"federation.aggregation = 'krum': expected one of"):
        load_config(overrides={"federation": {"aggregation": "krum"}})


def lora_reply(value: float, n: int = 10) -> Reply:
    d_in, d_out = SHAPES["l0.query"]
    return Reply({"adapter.l0.query.lora_A": torch.full((1, 4, d_in), value),
                  "adapter.l0.query.lora_B": torch.full((1, d_out, 4), value)}, n)


@pytest.mark.parametrize("algorithm", ["fedit", "ifca-lora"])
@pytest.mark.parametrize("rule,expected", [("mean", 4.0), ("median", 1.0)])
def test_baselines_combine_by_the_configured_rule(algorithm, rule, expected):
    config = load_config(overrides={"federation": {"aggregation": rule, "max_experts": 1}})
    clients = [ClientInfo(f"c{i}", 10) for i in range(3)]
    server = ALGORITHMS[algorithm](config, clients, SHAPES)
    server.configure_fit(1)
    replies = {"c0": lora_reply(1.0), "c1": lora_reply(1.0), "c2": lora_reply(10.0)}
    if algorithm == "ifca-lora":
        for reply in replies.values():
            reply.extra = ALGORITHMS[algorithm].reply_fields(0)
    server.aggregate_fit(1, replies)
    A = server.server_experts()["adapter.l0.query.lora_A"]
    assert torch.allclose(A, torch.full_like(A, expected))


@pytest.mark.parametrize("rule,expected", [("mean", 4.0), ("median", 1.0),
                                           ("trimmed-mean", 1.0)])
def test_fedlease_combines_each_cluster_expert_and_router_by_the_rule(rule, expected):
    config = load_config(overrides={"federation": {
        "aggregation": rule, "trim_fraction": 0.34, "rounds": 3, "warmup_rounds": 1,
        "max_experts": 1, "allocation": "lora-b"}})
    clients = [ClientInfo(f"c{i}", 10) for i in range(3)]
    server = ALGORITHMS["fedlease"](config, clients, SHAPES)
    server.configure_fit(1)
    server.aggregate_fit(1, {"c0": lora_reply(1.0), "c1": lora_reply(1.0),
                             "c2": lora_reply(10.0)})  # allocation: one cluster of 3
    A = server.experts["adapter.l0.query.lora_A"]
    assert torch.allclose(A, torch.full_like(A, expected))
    down = server.configure_fit(2)
    replies = {}
    for cid, value in (("c0", 2.0), ("c1", 2.0), ("c2", -50.0)):
        upload = {k: torch.full_like(v, value) for k, v in down[cid].arrays.items()}
        replies[cid] = Reply(upload, 10)
    server.aggregate_fit(2, replies)
    router = server.routers[0]["adapter.l0.query.router"]
    want = -46 / 3 if rule == "mean" else 2.0
    assert torch.allclose(router, torch.full_like(router, want))
    assert torch.allclose(server.experts["adapter.l0.query.lora_B"],
                          torch.full_like(server.experts["adapter.l0.query.lora_B"], want))
