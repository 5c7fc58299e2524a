"""What a client does differently under ``[privacy]``: its plan, calibrated once from the
config and its own training-set size, drives its local update (DP-SGD) and its allocation
vector. A trainer holds one as ``trainer.privacy`` (``tasks.loading`` sets it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedlease.config.schema import RunConfig
from fedlease.privacy.accounting import ClientPlan, calibrate
from fedlease.privacy.dpsgd import noise_generator, private_train
from fedlease.privacy.embedding import private_mean_representation


@dataclass
class ClientPrivacy:
    plan: ClientPlan
    seeded_noise: bool
    # the allocation vector once released: sent again as it is (post-processing, no new cost)
    released_embedding: torch.Tensor | None = field(default=None, repr=False)

    def train(self, trainer, state, layout, seed: int):
        return private_train(trainer, state, layout, seed, self.plan, self.seeded_noise)

    def embedding(self, trainer, seed: int) -> torch.Tensor:
        if self.released_embedding is None:
            self.released_embedding = private_mean_representation(
                trainer, self.plan, noise_generator(self.seeded_noise, seed))
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
