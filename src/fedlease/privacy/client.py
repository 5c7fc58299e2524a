"""What a client does differently under ``[privacy]``: its plan, calibrated once from the
config and its own training-set size, drives its local update (DP-SGD) and its allocation
vector. A trainer holds one as ``trainer.privacy`` (``tasks.loading`` sets it). What the
client has spent lives in its state (the simulator, whose checkpoint keeps it) or, on a Flower
node, in its ledger on the node's disk (``ledger.py``), which then rules."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedlease.config.schema import RunConfig
from fedlease.privacy.accounting import ClientPlan, Mechanism, calibrate, read_history
from fedlease.privacy.dpsgd import DPSGDUpdate, noise_generator
from fedlease.privacy.embedding import private_mean_representation
from fedlease.privacy.ledger import PrivacyLedger


@dataclass
class ClientPrivacy:
    plan: ClientPlan
    seeded_noise: bool
    # the allocation vector once released: sent again as it is (post-processing, no new cost)
    released_embedding: torch.Tensor | None = field(default=None, repr=False)
    ledger: PrivacyLedger | None = None  # on a Flower node: what its data has spent, on disk

    def spent(self, state) -> list[Mechanism]:
        """The history spent so far: the ledger's if there is one, else the state's; the
        initial one (the vector counted from the start) if neither holds any."""
        recorded = self.ledger.history() if self.ledger is not None else read_history(state)
        return self.plan.initial_history() if recorded is None else recorded

    def update_rule(self, trainer, state, seed: int) -> DPSGDUpdate:
        """The client's DP-SGD for one round of ``LocalTrainer.train``."""
        return DPSGDUpdate(trainer, self.plan, self.seeded_noise, seed, self.spent(state),
                           self.ledger.record if self.ledger is not None else None)

    def embedding(self, trainer, seed: int) -> torch.Tensor:
        if self.ledger is not None and self.released_embedding is None:
            self.released_embedding = self.ledger.embedding()
        if self.released_embedding is None:
            vector = private_mean_representation(
                trainer, self.plan, noise_generator(self.seeded_noise, seed))
            if self.ledger is not None:  # on disk before it leaves the client
                self.ledger.record_embedding(vector, self.spent({}))
            self.released_embedding = vector
        return self.released_embedding


def client_privacy(config: RunConfig, num_train: int,
                   releases_embedding: bool) -> ClientPrivacy | None:
    """The client's DP setup, or None when ``[privacy]`` is off."""
    privacy = config.privacy
    if not privacy.enabled:
        return None
    plan = calibrate(privacy, num_train=num_train, batch_size=config.train.batch_size,
                     local_epochs=config.train.local_epochs, rounds=config.federation.rounds,
                     releases_embedding=releases_embedding)
    return ClientPrivacy(plan, privacy.seeded_noise)
