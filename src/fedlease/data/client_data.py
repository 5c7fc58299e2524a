"""Clients and their data: labelled examples, split label-balanced and disjoint per client."""

from __future__ import annotations

import random
from dataclasses import dataclass

from fedlease.errors import DataError


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # index into the task's label list
    text_pair: str | None = None


@dataclass
class ClientData:
    client_id: str
    task: str
    labels: list[str]
    train: list[Example]
    test: list[Example]

    @property
    def num_labels(self) -> int:
        return len(self.labels)



def split_task(
    task: str,
    labels: list[str],
    pool: list[Example],
    num_clients: int,
    train_per_client: int,
    test_per_client: int,
    seed: int,
) -> list[ClientData]:
    """Draw ``num_clients`` disjoint, label-balanced train/test sets from one task's pool.

    Per label, the examples are shuffled with ``seed`` and dealt out in order; when a split size
    does not divide by the number of labels, the first labels get one example more.
    """
    by_label: dict[int, list[Example]] = {i: [] for i in range(len(labels))}
    for ex in pool:
        by_label[ex.label].append(ex)
    rng = random.Random(f"{seed}:{task}")
    for examples in by_label.values():
        rng.shuffle(examples)

    def quota(n: int) -> list[int]:
        base, extra = divmod(n, len(labels))
        return [base + (1 if i < extra else 0) for i in range(len(labels))]

    train_quota, test_quota = quota(train_per_client), quota(test_per_client)
    for label, examples in by_label.items():
        need = num_clients * (train_quota[label] + test_quota[label])
        if len(examples) < need:
            raise DataError(
                f"task {task!r}: label {labels[label]!r} has {len(examples)} examples, but "
                f"{num_clients} clients x ({train_per_client} train + {test_per_client} test) "
                f"need {need}; lower data.train_per_client / test_per_client / clients_per_task"
            )
    cursor = dict.fromkeys(by_label, 0)

    def take(q: list[int]) -> list[Example]:
        out = []
        for label, n in enumerate(q):
            out += by_label[label][cursor[label] : cursor[label] + n]
            cursor[label] += n
        rng.shuffle(out)
        return out

    clients = []
    for i in range(num_clients):
        train, test = take(train_quota), take(test_quota)
        clients.append(ClientData(f"{task}-{i}", task, list(labels), train, test))
    return clients
