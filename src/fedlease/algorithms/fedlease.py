"""FedLEASE: warm-up LoRAs, clients clustered by their B matrices, one expert per cluster, and an
adaptive top-M router on every client (see ``../shared/FEDLEASE.md``).

Rounds ``1..W`` (warm-up): every client trains its own LoRA from a common seeded init; nothing is
aggregated. After round ``W`` each client uploads its LoRA, the server clusters the B matrices and
starts expert ``c`` as the sample-weighted mean of the LoRAs of cluster ``c``. Rounds ``W+1..R``:
each client runs all K experts behind its router (2K-1 slots, top K), trains its own expert and
router, and uploads both; expert ``c`` and the router of cluster ``c`` are the sample-weighted
means of the uploads of cluster ``c`` (the reference code takes a plain mean; with equal client
sizes the two agree).

A client whose warm-up LoRA did not arrive for the allocation (it dropped out, or a runner that
samples clients did not pick it) is clustered without it; it keeps training its warm-up LoRA
and, the first time that LoRA arrives, joins the cluster whose expert's B matrices are nearest
(the same B distance), then gets the experts like every other client.
"""

from __future__ import annotations

import torch

from fedlease.algorithms.base import Algorithm, Instruction, Reply, weighted_mean
from fedlease.algorithms.clustering import Clustering, b_distance_matrix, cluster_clients
from fedlease.model.lora import AdapterLayout, init_router
from fedlease.model.model import ADAPTER_PREFIX

LORA_PARTS = ["lora_A", "lora_B"]


class FedLEASE(Algorithm):
    name = "fedlease"
    state_fields = ("clustering", "clustered", "cluster_of", "experts", "routers")
    uses_warmup = True

    def __init__(self, config, clients, adapter_shapes):
        super().__init__(config, clients, adapter_shapes)
        self.warmup_rounds = config.federation.warmup_rounds
        self.initial_lora = self.init_lora_state()
        self.clustering: Clustering | None = None
        self.clustered: list[str] = []  # the clients the clustering saw, in its order
        self.cluster_of: dict[str, int] = {}
        self.experts: dict[str, torch.Tensor] = {}  # lora_A/lora_B stacked over experts
        self.routers: list[dict[str, torch.Tensor]] = []  # one per cluster

    @property
    def num_experts(self) -> int:
        return self.clustering.num_clusters

    def layout_for(self, client_id: str) -> AdapterLayout:
        return AdapterLayout.fedlease(self.num_experts, self.cluster_of[client_id])

    def client_layout_bound(self) -> AdapterLayout:
        """At most ``max_experts`` clusters: that many experts and their router slots."""
        return AdapterLayout.fedlease(self.config.federation.max_experts, 0)

    def assign(self, clustering: Clustering) -> list[int]:
        """The expert of each client, in client order: its cluster."""
        return clustering.labels

    def download(self, after_round: int) -> dict[str, Instruction]:
        warmup_layout = AdapterLayout().to_config()
        if after_round < self.warmup_rounds:
            arrays = self.initial_lora if after_round == 0 else {}
            return {c.client_id: Instruction(dict(arrays), {"layout": warmup_layout})
                    for c in self.clients}
        return {
            c.client_id: Instruction(
                {**self.experts, **self.routers[self.cluster_of[c.client_id]]},
                {"layout": self.layout_for(c.client_id).to_config()},
            ) if c.client_id in self.cluster_of else Instruction({}, {"layout": warmup_layout})
            for c in self.clients
        }

    def upload_spec(self, rnd: int, client_id: str) -> dict | None:
        if rnd < self.warmup_rounds:
            return None
        if client_id not in self.cluster_of:  # the allocation round, or a late client
            return {"experts": [0], "parts": LORA_PARTS}
        return {"experts": [self.cluster_of[client_id]], "parts": LORA_PARTS + ["router"]}

    def aggregate_fit(self, rnd: int, replies: dict[str, Reply]) -> None:
        if rnd == self.warmup_rounds:
            self.allocate_experts(replies)
        elif rnd > self.warmup_rounds:
            late = {cid: r for cid, r in replies.items() if cid not in self.cluster_of}
            self.aggregate_experts({cid: r for cid, r in replies.items() if cid not in late})
            self.assign_late(late)

    def allocate_experts(self, replies: dict[str, Reply]) -> None:
        """Phase 2: cluster the warm-up B matrices, one expert per cluster, routers per cluster.
        Clients without a reply are left out (see ``assign_late``)."""
        ids = [c.client_id for c in self.clients if c.client_id in replies]
        if not ids:
            raise RuntimeError("expert allocation: no client uploaded its warm-up LoRA")
        self.clustered = ids
        b_mats = [{k: v for k, v in replies[cid].arrays.items() if k.endswith(".lora_B")}
                  for cid in ids]
        self.clustering = cluster_clients(b_distance_matrix(b_mats),
                                          self.config.federation.max_experts)
        self.cluster_of = dict(zip(ids, self.assign(self.clustering), strict=True))
        K = self.num_experts
        members = [[cid for cid in ids if self.cluster_of[cid] == c] for c in range(K)]
        self.experts = {
            key: torch.cat([
                weighted_mean([replies[cid].arrays[key] for cid in group],
                              [replies[cid].num_examples for cid in group])
                for group in members
            ])
            for key in replies[ids[0]].arrays
        }
        gen = torch.Generator().manual_seed(self.config.federation.seed + 1)
        num_slots = len(self.layout_for(ids[0]).router_slots)
        self.routers = [
            {f"{ADAPTER_PREFIX}{name}.router": init_router(d_in, num_slots, gen)
             for name, (d_in, _) in sorted(self.adapter_shapes.items())}
            for _ in range(K)
        ]

    def aggregate_experts(self, replies: dict[str, Reply]) -> None:
        """Expert c and router c: sample-weighted means over the replies of cluster c."""
        for c in range(self.num_experts):
            group = [cid for cid in replies if self.cluster_of[cid] == c]
            if not group:
                continue  # nobody of this cluster answered: keep its expert as it was
            weights = [replies[cid].num_examples for cid in group]
            for key in replies[group[0]].arrays:
                mean = weighted_mean([replies[cid].arrays[key] for cid in group], weights)
                if key.endswith(".router"):
                    self.routers[c][key] = mean
                else:
                    self.experts[key] = self.experts[key].clone()
                    self.experts[key][c] = mean[0]

    def assign_late(self, replies: dict[str, Reply]) -> None:
        """Clients that missed the allocation join the cluster whose expert's B is nearest."""
        b_keys = sorted(k for k in self.experts if k.endswith(".lora_B"))
        expert_bs = [{k: self.experts[k][c : c + 1] for k in b_keys}
                     for c in range(self.num_experts)]
        for cid, reply in replies.items():
            distance = b_distance_matrix([{k: reply.arrays[k] for k in b_keys}, *expert_bs])
            self.cluster_of[cid] = int(distance[0, 1:].argmin())

    def report(self) -> dict:
        if self.clustering is None:
            return {}
        return {
            "clients": self.clustered,
            "assignment": self.cluster_of,
            "num_experts": self.num_experts,
            "silhouette": {str(k): v for k, v in self.clustering.silhouette.items()},
            "distance": self.clustering.distance.tolist(),
        }
