"""Many small label-skewed clients from the built-in tasks (data.label_skew)."""

import pytest

from fedlease.configure import load_config
from fedlease.data.client_data import ClientData, Example
from fedlease.data.skewed import check_every_client_has_examples, split_task_skewed
from fedlease.errors import DataError
from fedlease.tasks.loading import load_clients

POOL = [Example(f"text {i}", i % 3) for i in range(300)]


def test_every_client_gets_its_sizes_disjoint_examples_and_a_skewed_mix():
    clients = split_task_skewed("t", ["a", "b", "c"], POOL, 20, 8, 4, alpha=0.3, seed=0)
    assert [c.client_id for c in clients] == [f"t-{i}" for i in range(20)]
    assert all(len(c.train) == 8 and len(c.test) == 4 for c in clients)
    texts = [e.text for c in clients for e in c.train + c.test]
    assert len(texts) == len(set(texts))  # disjoint
    majority = [max((e.label for e in c.train), key=[e.label for e in c.train].count)
                for c in clients]
    share = [sum(e.label == m for e in c.train) / 8 for c, m in zip(clients, majority,
                                                                    strict=True)]
    assert sum(share) / len(share) > 0.6  # balanced would be 1/3 + rounding
    assert clients == split_task_skewed("t", ["a", "b", "c"], POOL, 20, 8, 4, 0.3, 0)


def test_a_pool_too_small_is_refused_naming_the_task():
    with pytest.raises(DataError, match="task 't': 300 examples, but 30 clients"):
        split_task_skewed("t", ["a", "b", "c"], POOL, 30, 8, 4, 0.3, 0)


def test_a_client_without_test_examples_is_named():
    empty = ClientData("x-3", "x", ["a", "b"], [Example("t", 0)], [])
    with pytest.raises(DataError, match="client 'x-3' .* has no test example"):
        check_every_client_has_examples([empty])


def test_a_thousand_builtin_clients():
    config = load_config(overrides={
        "data": {"clients_per_task": 250, "train_per_client": 3, "test_per_client": 1,
                 "label_skew": 0.5},
        "federation": {"clients_per_round": 16}})
    clients = load_clients(config)
    assert len(clients) == 1000 and len({c.client_id for c in clients}) == 1000
    assert all(len(c.train) == 3 and len(c.test) == 1 for c in clients)
