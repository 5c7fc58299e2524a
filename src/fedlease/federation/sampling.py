"""Which clients train and which are evaluated in a round: ONE rule for every runner.

``federation.clients_per_round = k`` (0: all) picks ``k`` clients per round as a function of
the seed, the round and the federation's client list only, so the simulator and the Flower
ServerApp ask the same clients (a sampled run gives the same metrics on both), and a resumed
run samples as the uninterrupted one (no sampler state). A client picked whose Flower node is
offline does not answer and is left out of that step.

Newcomers (``first_timers``): a chosen client starts from the initial tensors while the server
has never accepted an upload of it (never sampled, or every upload rejected or lost: what it
trained is no part of the federation, whether its runner kept it or not), or when its runner
lost its local state (a resumed Flower run).

Evaluation (``clients_to_evaluate``): each round, the round's chosen clients (all, without
sampling) that the server accepted an upload of at least once, thinned to
``federation.fraction_evaluate`` of them (Flower's ``fraction-evaluate``) by a generator of
(seed, round); in the last round every client, so the final table covers the whole
federation. A newcomer is then evaluated as it would start: the server's current tensors over
the initial ones, and the common head init (``Algorithm.configure_fit(first_time=...)``).
"""

from __future__ import annotations

import random
from collections.abc import Collection

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


def first_timers(chosen: list[str], trained: set[str],
                 stateless: Collection[str] = ()) -> list[str]:
    """Of ``chosen``, the clients that start from the initial tensors: never accepted
    (``trained`` holds the clients the server accepted an upload of) or ``stateless``."""
    return [cid for cid in chosen if cid not in trained or cid in stateless]


def clients_to_evaluate(rnd: int, last_round: int, candidates: list[str], chosen: list[str],
                        trained: set[str], fraction: float = 1.0, seed: int = 0) -> list[str]:
    """Every round but the last: the round's ``chosen`` clients that have trained, ``fraction``
    of them (at least one) drawn by a generator seeded with (seed, round); the last round,
    every candidate (the final table covers all clients)."""
    if rnd == last_round:
        return list(candidates)
    picked = set(chosen) & trained
    evaluable = [cid for cid in candidates if cid in picked]
    size = min(len(evaluable), max(int(len(evaluable) * fraction), 1))
    if size == len(evaluable):
        return evaluable
    thinned = set(random.Random(f"fedlease-evaluate:{seed}:{rnd}").sample(evaluable, size))
    return [cid for cid in evaluable if cid in thinned]
