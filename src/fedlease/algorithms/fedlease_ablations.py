"""The two ablations of FedLEASE from the paper, to see what each part contributes.

* ``fedlease-fixed-top-m``: the clustering and the K experts as FedLEASE, but the router has one
  slot per expert (K slots, no extra slots for the client's own expert) and keeps a fixed
  ``FIXED_TOP_M`` experts per token, so the own expert is no longer always used and the number
  of experts per token does not adapt.
* ``fedlease-no-cluster``: everything as FedLEASE, K as found by the clustering, but clients are
  assigned to the K experts at random (a seeded shuffle of the cluster labels, so the cluster
  sizes stay the same): the experts no longer group similar clients.
"""

from __future__ import annotations

import torch

from fedlease.algorithms.clustering import Clustering
from fedlease.algorithms.fedlease import FedLEASE
from fedlease.model.lora import AdapterLayout

FIXED_TOP_M = 2


class FedLEASEFixedTopM(FedLEASE):
    name = "fedlease-fixed-top-m"

    def expert_layout(self, expert: int) -> AdapterLayout:
        K = self.num_experts
        return AdapterLayout(K, (expert,), True, tuple(range(K)), min(FIXED_TOP_M, K))


class FedLEASENoCluster(FedLEASE):
    name = "fedlease-no-cluster"

    def assign(self, clustering: Clustering) -> list[int]:
        gen = torch.Generator().manual_seed(self.config.federation.seed + 2)
        order = torch.randperm(len(clustering.labels), generator=gen).tolist()
        return [clustering.labels[i] for i in order]
