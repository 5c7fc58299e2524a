"""Which clients train, which start afresh and which are evaluated in a round: ONE rule for
every transport.

``federation.clients_per_round = k`` (0: all) picks ``k`` clients per round as a function of
the seed, the round and the federation's client list only, so the simulator and the Flower
ServerApp ask the same clients (a sampled run gives the same metrics on both), and a resumed
run samples as the uninterrupted one (no sampler state). A client picked whose Flower node is
offline does not answer and is left out of that step.

Newcomers (``first_timers``): a chosen client starts from the initial tensors while the server
has never accepted an upload of it (never sampled, or every upload rejected or lost: what it
trained is no part of the federation, whether its transport kept it or not), or when its
transport lost its local state (a resumed Flower run).

Evaluation (``evaluate_clients``): each round, the round's chosen clients (all, without
sampling) that the server accepted an upload of at least once, thinned to
``federation.fraction_evaluate`` of them (Flower's ``fraction-evaluate``) by a generator of
(seed, round); in the last round every client, so the final table covers the whole
federation. A newcomer is then evaluated by the newcomer protocol every algorithm shares
(``Algorithm.newcomer``), after ``federation.newcomer_steps`` local steps (0: as it would
start: the server's current tensors over the initial ones, and the common head init).

``ClientSampling`` is that rule as one object: the engine and both transports ask it, and it
is the one place that reads ``federation.clients_per_round`` and ``fraction_evaluate``.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

from fedlease.config import RunConfig
from fedlease.errors import ConfigError


@dataclass(frozen=True)
class ClientSampling:
    """Which clients train and which are evaluated in each round of a run."""

    clients_per_round: int  # 0: every client every round
    seed: int
    rounds: int
    fraction_evaluate: float = 1.0  # of the round's trained clients, every round but the last

    @classmethod
    def of(cls, config: RunConfig) -> ClientSampling:
        federation = config.federation
        return cls(federation.clients_per_round, federation.seed, federation.rounds,
                   federation.fraction_evaluate)

    @property
    def samples(self) -> bool:
        """Whether a round may leave clients out (else every client trains every round)."""
        return self.clients_per_round > 0

    def check(self, num_clients: int) -> None:
        """Raise ``ConfigError`` unless ``0 <= clients_per_round <= num_clients`` (before any
        work)."""
        if not 0 <= self.clients_per_round <= num_clients:
            raise ConfigError(f"federation.clients_per_round = {self.clients_per_round}: "
                              f"expected an integer in [0, {num_clients}], the federation's "
                              f"{num_clients} clients (0: all every round)")

    def fit_clients(self, order: list[str], rnd: int) -> list[str]:
        """The clients that train in round ``rnd``, in ``order``: ``clients_per_round`` of them
        drawn without replacement by a generator seeded with (seed, round); all when 0 or
        >= len(order)."""
        if self.clients_per_round == 0 or self.clients_per_round >= len(order):
            return list(order)
        chosen = set(random.Random(f"fedlease-sample:{self.seed}:{rnd}").sample(
            order, self.clients_per_round))
        return [cid for cid in order if cid in chosen]

    @staticmethod
    def first_timers(chosen: list[str], trained: set[str],
                     stateless: Collection[str] = ()) -> list[str]:
        """Of ``chosen``, the clients that start from the initial tensors: never accepted
        (``trained`` holds the clients the server accepted an upload of) or ``stateless``."""
        return [cid for cid in chosen if cid not in trained or cid in stateless]

    def evaluate_clients(self, rnd: int, candidates: list[str], chosen: list[str],
                         trained: set[str]) -> list[str]:
        """Every round but the last: the round's ``chosen`` clients that have trained,
        ``fraction_evaluate`` of them (at least one) drawn by a generator seeded with (seed,
        round); the last round, every candidate (the final table covers all clients)."""
        if rnd == self.rounds:
            return list(candidates)
        picked = set(chosen) & trained
        evaluable = [cid for cid in candidates if cid in picked]
        size = min(len(evaluable), max(int(len(evaluable) * self.fraction_evaluate), 1))
        if size == len(evaluable):
            return evaluable
        thinned = set(random.Random(f"fedlease-evaluate:{self.seed}:{rnd}").sample(evaluable,
                                                                                   size))
        return [cid for cid in evaluable if cid in thinned]
