"""Which clients train and which are evaluated in a round: ONE rule for every transport.

``federation.clients_per_round = k`` (0: all) picks ``k`` clients per round as a function of
the seed, the round and the federation's client list only, so the simulator and the Flower
ServerApp ask the same clients (a sampled run gives the same metrics on both), and a resumed
run samples as the uninterrupted one (no sampler state). A client picked whose Flower node is
offline does not answer and is left out of that step.

Evaluation: each round, the clients that trained in it (sampled and accepted at least once);
in the last round every client, so the final table covers the whole federation. A client
that never trained is then evaluated by the newcomer protocol every algorithm shares
(``Algorithm.newcomer``), after ``federation.newcomer_steps`` local steps.

``ClientSampling`` is that rule as one object: the engine and both transports ask it, and it
is the one place that reads ``federation.clients_per_round``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fedlease.config import RunConfig
from fedlease.errors import ConfigError


@dataclass(frozen=True)
class ClientSampling:
    """Which clients train and which are evaluated in each round of a run."""

    clients_per_round: int  # 0: every client every round
    seed: int
    rounds: int

    @classmethod
    def of(cls, config: RunConfig) -> ClientSampling:
        federation = config.federation
        return cls(federation.clients_per_round, federation.seed, federation.rounds)

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

    def evaluate_clients(self, rnd: int, candidates: list[str], chosen: list[str],
                         trained: set[str]) -> list[str]:
        """Under sampling: the round's ``chosen`` clients that have trained; the last round,
        every candidate (the final table covers all clients). Without: every candidate."""
        if not self.samples or rnd == self.rounds:
            return list(candidates)
        picked = set(chosen) & trained
        return [cid for cid in candidates if cid in picked]
