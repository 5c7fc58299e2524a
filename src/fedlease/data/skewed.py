"""Many small label-skewed clients from one task's pool (``data.label_skew > 0``).

The cross-device setting: hundreds of clients per task, each with a few examples whose label
mix differs from client to client. Every client gets exactly ``train_per_client`` +
``test_per_client`` examples; its label proportions are drawn from Dirichlet(``label_skew``)
over the task's labels (small: one label dominates; large: nearly balanced), its test split
has the same mix as its training split. Pure Python and seeded: no extra package needed.
"""

from __future__ import annotations

import random

from fedlease.data.client_data import ClientData, Example
from fedlease.errors import DataError


def dirichlet(rng: random.Random, alpha: float, size: int) -> list[float]:
    draws = [rng.gammavariate(alpha, 1.0) for _ in range(size)]
    total = sum(draws)
    return [d / total for d in draws] if total > 0 else [1.0 / size] * size


def label_counts(rng: random.Random, shares: list[float], n: int) -> list[int]:
    """``n`` examples split by ``shares``: each drawn from the shares (a multinomial)."""
    counts = [0] * len(shares)
    for label in rng.choices(range(len(shares)), weights=shares, k=n):
        counts[label] += 1
    return counts


def split_task_skewed(task: str, labels: list[str], pool: list[Example], num_clients: int,
                      train_per_client: int, test_per_client: int, alpha: float,
                      seed: int) -> list[ClientData]:
    """``num_clients`` disjoint clients of one task, label mixes from Dirichlet(``alpha``).
    A label whose examples run out is topped up from the label with the most left, so the
    sizes hold whenever the pool has ``num_clients * (train + test)`` examples."""
    need = num_clients * (train_per_client + test_per_client)
    if len(pool) < need:
        raise DataError(f"task {task!r}: {len(pool)} examples, but {num_clients} clients x "
                        f"({train_per_client} train + {test_per_client} test) need {need}; "
                        "lower data.clients_per_task / train_per_client / test_per_client")
    rng = random.Random(f"{seed}:{task}:skew")
    by_label: list[list[Example]] = [[] for _ in labels]
    for example in pool:
        by_label[example.label].append(example)
    for examples in by_label:
        rng.shuffle(examples)

    def take(counts: list[int]) -> list[Example]:
        out = []
        for label, n in enumerate(counts):
            for _ in range(n):
                source = label if by_label[label] else max(
                    range(len(labels)), key=lambda i: len(by_label[i]))
                out.append(by_label[source].pop())
        rng.shuffle(out)
        return out

    clients = []
    for i in range(num_clients):
        shares = dirichlet(rng, alpha, len(labels))
        train = take(label_counts(rng, shares, train_per_client))
        test = take(label_counts(rng, shares, test_per_client))
        clients.append(ClientData(f"{task}-{i}", task, list(labels), train, test))
    return clients


def check_every_client_has_examples(clients: list) -> None:
    """Raise ``DataError`` naming the first client without a training or a test example."""
    for client in clients:
        for split in ("train", "test"):
            if not getattr(client, split):
                raise DataError(f"client {client.client_id!r} (task {client.task!r}) has no "
                                f"{split} example; every client needs at least one train and "
                                "one test example: use fewer clients or more examples")
