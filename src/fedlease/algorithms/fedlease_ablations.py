"""Three ablations of FedLEASE (two from the paper, one from FedTreeLoRA's question), to see
what each part contributes.

* ``fedlease-fixed-top-m``: the clustering and the K experts as FedLEASE, but the router has one
  slot per expert (K slots, no extra slots for the client's own expert) and keeps a fixed
  ``FIXED_TOP_M`` experts per token, so the own expert is no longer always used and the number
  of experts per token does not adapt.
* ``fedlease-no-cluster``: everything as FedLEASE, K as found by the clustering, but clients are
  assigned to the K experts at random (a seeded shuffle of the cluster labels, so the cluster
  sizes stay the same): the experts no longer group similar clients.
* ``fedlease-cluster-only``: FedLEASE's allocation (signal, K, warm-up, expert init) unchanged,
  then each client receives, trains and uses only its own cluster's expert, with no router and
  no other experts, and uploads that expert as FedLEASE's clients do (without a router). It is
  FedAvg within each cluster: what the allocation alone is worth, without the mixture.
"""

from __future__ import annotations

import torch

from fedlease.algorithms.clustering import Clustering
from fedlease.algorithms.fedlease import LORA_PARTS, FedLEASE
from fedlease.algorithms.messages import UploadSpec
from fedlease.model.lora import AdapterLayout

FIXED_TOP_M = 2


class FedLEASEFixedTopM(FedLEASE):
    """FedLEASE with a fixed top-2 router instead of the adaptive top-M (an ablation)."""

    name = "fedlease-fixed-top-m"

    def expert_layout(self, expert: int) -> AdapterLayout:
        K = self.num_experts
        return AdapterLayout(K, (expert,), True, tuple(range(K)), min(FIXED_TOP_M, K))


class FedLEASENoCluster(FedLEASE):
    """FedLEASE with the clients' expert assignment shuffled at random (an ablation)."""

    name = "fedlease-no-cluster"

    def assign(self, clustering: Clustering) -> list[int]:
        gen = torch.Generator().manual_seed(self.config.federation.seed + 2)
        order = torch.randperm(len(clustering.labels), generator=gen).tolist()
        return [clustering.labels[i] for i in order]


class FedLEASEClusterOnly(FedLEASE):
    """FedLEASE's allocation, then each client uses only its cluster's expert, no router (an
    ablation)."""

    name = "fedlease-cluster-only"

    def layout_for(self, client_id: str) -> AdapterLayout:
        return AdapterLayout()

    def expert_layout(self, expert: int) -> AdapterLayout:
        return AdapterLayout()

    def client_layout_bound(self) -> AdapterLayout:
        return AdapterLayout()

    def initial_routers(self, layout: AdapterLayout) -> list[dict[str, torch.Tensor]]:
        return [{} for _ in range(self.num_experts)]

    def cluster_start(self, cluster: int) -> dict[str, torch.Tensor]:
        """Only that cluster's expert, as a one-expert LoRA."""
        return {key: value[cluster : cluster + 1] for key, value in self.experts.items()}

    def cluster_upload(self, client_id: str) -> UploadSpec:
        return UploadSpec((0,), tuple(LORA_PARTS))
