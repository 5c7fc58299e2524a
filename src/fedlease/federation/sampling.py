"""Which clients train and which are evaluated in a round: ONE rule for every runner.

``federation.clients_per_round = k`` (0: all) picks ``k`` clients per round as a function of
the seed, the round and the federation's client list only, so the simulator and the Flower
ServerApp ask the same clients (a sampled run gives the same metrics on both), and a resumed
run samples as the uninterrupted one (no sampler state). A client picked whose Flower node is
offline does not answer and is left out of that step.

Evaluation: each round, the clients that trained in it (sampled and accepted at least once);
in the last round every client, so the final table covers the whole federation. A client
that never trained is then evaluated by the newcomer protocol every algorithm shares
(``Algorithm.newcomer``), after ``federation.newcomer_steps`` local steps.
"""

from __future__ import annotations

import random

from fedlease.errors import ConfigError


def check_clients_per_round(clients_per_round: int, num_clients: int) -> None:
    """Raise ``ConfigError`` unless ``0 <= clients_per_round <= num_clients`` (before any work)."""
    if not 0 <= clients_per_round <= num_clients:
        raise ConfigError(f"federation.clients_per_round = {clients_per_round}: expected an "
                          f"integer in [0, {num_clients}], the federation's {num_clients} "
                          "clients (0: all every round)")


def sampled_clients(order: list[str], clients_per_round: int, seed: int, rnd: int) -> list[str]:
    """The clients that train in round ``rnd``, in ``order``: ``clients_per_round`` of them drawn
    without replacement by a generator seeded with (seed, round); all when 0 or >= len(order)."""
    if clients_per_round == 0 or clients_per_round >= len(order):
        return list(order)
    chosen = set(random.Random(f"fedlease-sample:{seed}:{rnd}").sample(order, clients_per_round))
    return [cid for cid in order if cid in chosen]


def clients_to_evaluate(rnd: int, last_round: int, candidates: list[str], chosen: list[str],
                        trained: set[str]) -> list[str]:
    """Under sampling: the round's ``chosen`` clients that have trained; the last round, every
    candidate (the final table covers all clients)."""
    if rnd == last_round:
        return list(candidates)
    picked = set(chosen) & trained
    return [cid for cid in candidates if cid in picked]
